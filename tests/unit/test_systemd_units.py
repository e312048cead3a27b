"""The systemd backend's own units (node/services/systemd_units.py): what is rendered,
what systemd makes of it, and the systemctl calls around it.

systemd is not PID 1 here: `systemctl` and `journalctl` are the fake tools of
test_services.py, `systemd-analyze verify` checks the rendered files for real,
and tests/e2e/machines/test_machines.py runs the units under a real systemd.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from microstackd import errors
from microstackd.model import ServiceRecord
from microstackd.node import steps
from microstackd.node.roles import DEFINITIONS
from microstackd.node.services import ServiceSpec, SystemdManager, systemd_units
from tests.unit.test_services import FAKE_TOOL, PY, FakeTools, out

SPEC = ServiceSpec(
    "nova-compute",
    (PY, "-m", "microstackd.node.standin", "--service", "nova-compute"),
    env={"PATH": "/opt/os/bin:/usr/bin", "OS_NOVA_CONFIG_DIR": "/etc/microstackd/openstack/nova"},
    ready_pattern="configuration complete",
    ready_after=0.0,
    start_timeout=5.0,
)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTools:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("systemctl", "journalctl"):
        path = bin_dir / tool
        path.write_text(FAKE_TOOL.format(python=PY))
        path.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))  # nothing real can be reached
    tools = FakeTools(bin_dir)
    tools.script()
    return tools


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    path = tmp_path / "run-systemd-system"
    path.mkdir()
    return path


# -- rendering ----------------------------------------------------------------


def test_a_role_service_unit() -> None:
    assert systemd_units.owned(SPEC)
    assert systemd_units.render(SPEC) == (
        "# Written by microstackd for its role service nova-compute\n"
        "# (microstackd/node/services/systemd_units.py): rewritten whenever microstackd starts\n"
        "# the service, removed when it stops it. Amend it with a drop-in,\n"
        "# /etc/systemd/system/microstackd-nova-compute.service.d/*.conf, not here.\n"
        "[Unit]\n"
        "Description=MicroStack role service nova-compute (run by microstackd)\n"
        "StartLimitIntervalSec=60\n"
        "StartLimitBurst=5\n"
        "\n"
        "[Service]\n"
        "Type=exec\n"
        "Slice=microstackd.slice\n"
        f'ExecStart="{PY}" "-m" "microstackd.node.standin" "--service" "nova-compute"\n'
        'Environment="OS_NOVA_CONFIG_DIR=/etc/microstackd/openstack/nova"\n'
        'Environment="PATH=/opt/os/bin:/usr/bin"\n'
        "Restart=on-failure\n"
        "RestartSec=2s\n"
        "TimeoutStopSec=30s\n"
        "SyslogIdentifier=nova-compute\n"
    )


def test_units_microstackd_does_not_own_are_not_rendered() -> None:
    assert not systemd_units.owned(ServiceSpec("nova", ("/x",), unit="nova-compute.service"))
    assert not systemd_units.owned(ServiceSpec("nova", ("/x",), unit="microstackd-x.socket"))


def test_every_word_is_quoted_and_escaped() -> None:
    argv = ("/bin/x", "a b", 'q"u', "back\\slash", "$HOME", "100%", "new\nline", "\x01", ";")
    assert systemd_units.exec_line(argv) == (
        r'"/bin/x" "a b" "q\"u" "back\\slash" "$$HOME" "100%%" "new\nline" "\x01" ";"'
    )
    assert systemd_units.environment_lines({"B": 'x "y" 5%', "A": "$1"}) == [
        'Environment="A=$1"',  # Environment= expands no variables
        r'Environment="B=x \"y\" 5%%"',
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (ServiceSpec("x", ("python3", "-m", "x")), "must be absolute"),
        (ServiceSpec("x", ()), "needs a command line"),
        (ServiceSpec("x", ("/bin/x",), env={"A B": "1"}), "'A B' is not valid"),
    ],
)
def test_what_a_unit_cannot_express_is_refused(spec: ServiceSpec, message: str) -> None:
    with pytest.raises(errors.ServiceFailed, match=message):
        systemd_units.render(spec)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify_accepts_the_rendered_units(unit_dir: Path) -> None:
    """Every role's real services and a stand-in, rendered as the agent would."""
    values = {
        **{key: "1000" for role in DEFINITIONS.values() for key in role.settings},
        "config_root": "/etc/microstackd/openstack",
        "state_dir": "/var/lib/microstackd",
        "state_path": "/var/lib/microstackd/services",
        "run_dir": "/run/microstackd/services",
        "log_dir": "/var/lib/microstackd/logs",
        "helpers_dir": "/opt/microstackd/helpers",
        "python": PY,
        "node_name": "node-1",
        "libvirt_uri": "qemu:///system",
        "instances_bind": "",
        # verify wants ExecStart's binary to exist: this interpreter's directory.
        "openstack_prefix": str(Path(PY).parent.parent),
        "control_address": "10.0.0.1",
    }
    specs = [SPEC]
    for role in DEFINITIONS.values():
        for service in role.services:
            spec = steps.service_spec(service, values)
            # Debian's binaries (mariadbd, ovsdb-server) need not be installed here.
            specs.append(ServiceSpec(spec.name, (PY, *spec.argv[1:]), env=spec.env))
    paths = []
    for spec in specs:
        path = unit_dir / spec.unit
        path.write_text(systemd_units.render(spec))
        paths.append(str(path))
    result = subprocess.run(
        ["systemd-analyze", "verify", *paths], capture_output=True, text=True, timeout=120
    )
    about_units = [line for line in result.stderr.splitlines() if "microstackd-" in line]
    assert result.returncode == 0 and about_units == [], result.stderr


def test_no_role_service_has_a_secret_in_its_unit() -> None:
    """Unit files are world-readable and `systemctl show` prints a unit's
    environment to anyone: commands and environments name no secret setting."""
    for role in DEFINITIONS.values():
        secrets = {key for key in role.settings if re.search("password|secret|token", key)}
        assert secrets, f"{role.name}: the check below must have something to look for"
        for service in role.services:
            text = " ".join((*service.command, *(v for _, v in service.env)))
            used = set(re.findall(r"\$\{(\w+)\}", text))
            assert not used & secrets, f"{role.name} {service.name} uses {used & secrets}"


# -- the unit's life, with fake tools -----------------------------------------


def test_restart_writes_the_unit_and_reloads_only_when_it_changed(
    fake: FakeTools, unit_dir: Path
) -> None:
    fake.script(
        systemctl_daemon_reload=out(""),
        systemctl_show=[show("inactive", "dead"), show("active", "running")],
        systemctl_reset_failed=out(""),
        systemctl_restart=out(""),
    )
    changed = ServiceSpec(SPEC.name, SPEC.argv, env={"PATH": "/usr/bin"})

    async def main() -> str:
        manager = SystemdManager(unit_dir=unit_dir)
        await manager.restart(SPEC)
        first = (unit_dir / SPEC.unit).read_text()
        await manager.restart(SPEC)
        await manager.restart(changed)
        return first

    first = asyncio.run(main())
    assert first == systemd_units.render(SPEC)
    assert (unit_dir / SPEC.unit).read_text() == systemd_units.render(changed)
    assert (unit_dir / SPEC.unit).stat().st_mode & 0o777 == 0o644
    start = [SHOW_CALL, ["systemctl", "restart", SPEC.unit]]
    reload = [["systemctl", "daemon-reload"]]
    assert fake.calls() == [*reload, *start, *start, *reload, *start]


def test_a_unit_that_gave_up_is_reset_before_it_is_started(fake: FakeTools, unit_dir: Path) -> None:
    """systemd refuses to start a unit that hit its start limit until reset."""
    fake.script(
        systemctl_daemon_reload=out(""),
        systemctl_show=show("failed", "failed"),
        systemctl_reset_failed=out(""),
        systemctl_restart=out(""),
    )
    asyncio.run(SystemdManager(unit_dir=unit_dir).restart(SPEC))
    assert fake.calls()[1:] == [
        SHOW_CALL,
        ["systemctl", "reset-failed", SPEC.unit],
        ["systemctl", "restart", SPEC.unit],
    ]


def test_stop_removes_the_unit(fake: FakeTools, unit_dir: Path) -> None:
    fake.script(systemctl_stop=out(""), systemctl_daemon_reload=out(""))
    (unit_dir / SPEC.unit).write_text(systemd_units.render(SPEC))

    async def main() -> None:
        manager = SystemdManager(unit_dir=unit_dir)
        await manager.stop(SPEC)
        await manager.stop(SPEC)  # already gone: nothing to reload

    asyncio.run(main())
    assert not (unit_dir / SPEC.unit).exists()
    stop = ["systemctl", "stop", SPEC.unit]
    assert fake.calls() == [stop, ["systemctl", "daemon-reload"], stop]


def test_an_unwritable_unit_directory_is_named(fake: FakeTools, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")  # even root cannot make a directory under a file
    with pytest.raises(errors.ServiceFailed, match=r"must be able to write .*file/x: ReadW"):
        asyncio.run(SystemdManager(unit_dir=tmp_path / "file" / "x").restart(SPEC))
    assert fake.calls() == []


def show(state: str, sub: str, restarts: int = 0, started: float = 0.0) -> dict[str, Any]:
    reply: dict[str, Any] = out(
        f"ActiveState={state}\nSubState={sub}\nInvocationID=abc123\n"
        f"ExecMainStartTimestampMonotonic={int(started * 1e6)}\nNRestarts={restarts}\n"
    )
    return reply


SHOW_CALL = [
    "systemctl",
    "show",
    SPEC.unit,
    "--property=ActiveState,SubState,InvocationID,ExecMainStartTimestampMonotonic,NRestarts",
]
JOURNAL_CALL = ["journalctl", "-q", "_SYSTEMD_INVOCATION_ID=abc123", "--no-pager", "-o", "cat"]


def test_ready_once_active_and_the_pattern_is_in_this_runs_journal(
    fake: FakeTools, unit_dir: Path
) -> None:
    fake.script(
        systemctl_show=[show("activating", "start"), show("active", "running")],
        journalctl=[out("starting\n"), out("starting\nnova-compute: configuration complete\n")],
    )
    manager = SystemdManager(poll_interval=0.01, unit_dir=unit_dir)
    assert asyncio.run(manager.wait_ready(SPEC)) == ServiceRecord("nova-compute", "running")
    assert fake.calls() == [SHOW_CALL, SHOW_CALL, JOURNAL_CALL, SHOW_CALL, JOURNAL_CALL]


def test_a_run_that_systemd_restarts_fails_the_wait_with_its_exit(
    fake: FakeTools, unit_dir: Path
) -> None:
    fake.script(
        systemctl_show=[
            show("active", "running"),
            show("activating", "auto-restart", restarts=0),
            out("Result=exit-code\nExecMainCode=1\nExecMainStatus=1\n"),
        ],
        journalctl=[out("starting\n"), out("missing required setting [DEFAULT] host\n")],
    )
    manager = SystemdManager(poll_interval=0.01, unit_dir=unit_dir)
    with pytest.raises(errors.ServiceFailed) as failed:
        asyncio.run(manager.wait_ready(SPEC))
    assert failed.value.message == (
        "nova-compute exited with status 1; last log lines:\n"
        "missing required setting [DEFAULT] host"
    )


def test_the_wait_gives_up_naming_what_it_waited_for(fake: FakeTools, unit_dir: Path) -> None:
    fake.script(systemctl_show=show("active", "running"), journalctl=out("still starting\n"))
    # Long enough for a look or two through the fake tools on a loaded machine.
    spec = ServiceSpec(SPEC.name, SPEC.argv, ready_pattern="ready", start_timeout=2.0)
    manager = SystemdManager(poll_interval=0.01, unit_dir=unit_dir)
    with pytest.raises(errors.ServiceFailed) as failed:
        asyncio.run(manager.wait_ready(spec))
    assert failed.value.message == (
        "nova-compute did not become ready within 2 s (no line matching 'ready' in its log); "
        "last log lines:\nstill starting"
    )


def test_ready_after_counts_from_the_start_of_the_main_process(
    fake: FakeTools, unit_dir: Path
) -> None:
    fake.script(systemctl_show=show("active", "running", started=time.monotonic()))
    spec = ServiceSpec(SPEC.name, SPEC.argv, ready_after=30.0, start_timeout=2.0)
    manager = SystemdManager(poll_interval=0.01, unit_dir=unit_dir)
    with pytest.raises(errors.ServiceFailed, match=r"\(it must stay up 30 s\)"):
        asyncio.run(manager.wait_ready(spec))
    fake.script(systemctl_show=show("active", "running", started=time.monotonic() - 31))
    assert asyncio.run(manager.wait_ready(spec)).state == "running"


def test_ready_check_must_answer(fake: FakeTools, unit_dir: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    fake.script(systemctl_show=show("active", "running"))
    spec = ServiceSpec(SPEC.name, SPEC.argv, ready_after=0, ready_check=f"tcp://127.0.0.1:{port}")
    manager = SystemdManager(poll_interval=0.01, unit_dir=unit_dir)
    try:
        assert asyncio.run(manager.wait_ready(spec)).state == "running"
    finally:
        listener.close()
    closed = ServiceSpec(
        SPEC.name, SPEC.argv, ready_after=0, ready_check=spec.ready_check, start_timeout=2.0
    )
    with pytest.raises(errors.ServiceFailed, match=f"tcp://127.0.0.1:{port} did not answer"):
        asyncio.run(manager.wait_ready(closed))
