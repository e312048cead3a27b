"""The OpenStack roles as data: every template of every role renders and
parses, every command expands with no secret on its command line, and the
control's setup steps resume from a recorded state without redoing
what is done."""

from __future__ import annotations

import asyncio
import configparser
import dataclasses
import os
import stat
import string
from collections.abc import Awaitable
from pathlib import Path

import pytest
import yaml

from microstackd import errors
from microstackd.config import DaemonConfig
from microstackd.control import config as control_config
from microstackd.control.plane import NO_ENVIRONMENT, ControlPlane
from microstackd.enrolment import machine as enrolment
from microstackd.enrolment.machine import Enrolment, Run
from microstackd.enrolment.runner import Skipped
from microstackd.model import NodeRecord, NodeState, Role, StepState
from microstackd.node import render, steps
from microstackd.node.roles import COMPUTE, CONTROL, DEFINITIONS, RoleDefinition
from microstackd.node.roles.parts import SERVICE_PREFIX, SetupStep

#: A CRL as the control issues it (its content does not matter here).
CRL = "-----BEGIN X509 CRL-----\n-----END X509 CRL-----"

NODE = NodeRecord(
    name="node-1",
    role=Role.COMPUTE,
    address="10.0.0.2",
    hostname="node-1",
    state=NodeState.ENROLLING,
    message="",
    cert_serial="aa",
    cert_not_after=0,
    joined=0,
)


def _daemon_config(tmp_path: Path, prefix: Path | None = Path("/opt/os")) -> DaemonConfig:
    return DaemonConfig(
        state_dir=tmp_path / "state",
        socket=tmp_path / "run" / "microstackd.sock",
        listen_host="10.0.0.1",
        listen_port=10002,
        cluster_port=10003,
        node_name="control",
        hostname="control",
        config_root=tmp_path / "etc",
        openstack_prefix=prefix,
    )


@pytest.fixture
def config(tmp_path: Path) -> control_config.ControlConfig:
    return control_config.ensure(tmp_path / "control.yaml", "10.0.0.1")


def _values(
    tmp_path: Path, config: control_config.ControlConfig, role: RoleDefinition
) -> dict[str, str]:
    base = steps.base_values(_daemon_config(tmp_path))
    if role is CONTROL:  # as plane.py adds them
        return {**base, **control_config.control_settings(config), "host": "control"}
    # as the node's agent adds them (agent.py)
    node = {"virt_type": "qemu", "virt_detail": "virt_type qemu (detected: no /dev/kvm)"}
    return {
        **base,
        **control_config.issue_compute_settings(config, NODE, revocation_list=CRL),
        **node,
    }


def _secrets(config: control_config.ControlConfig) -> set[str]:
    return {
        config.rabbitmq_password,
        config.database_password,
        config.admin_password,
        *config.service_passwords.values(),
    }


@pytest.mark.parametrize("role", DEFINITIONS.values(), ids=[r.value for r in DEFINITIONS])
def test_every_template_renders_and_parses(
    tmp_path: Path, config: control_config.ControlConfig, role: RoleDefinition
) -> None:
    values = _values(tmp_path, config, role)
    paths = render.render_role(role, values, tmp_path / "etc")
    assert len(paths) == len(role.files)
    for path, spec in zip(paths, role.files, strict=True):
        text = path.read_text()
        assert "${" not in text, path
        assert oct(path.stat().st_mode & 0o777) == oct(spec.mode)
        if path.name == "dnsmasq.conf":  # dnsmasq's key=value lines
            lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
            assert lines == ["user=root"], text
        elif path.parent.name == "libvirt":  # libvirt's own key = value syntax, no sections
            lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
            assert all(" = " in ln for ln in lines), text
        elif path.suffix in (".conf", ".ini", ".cnf") and path.name != "rabbitmq.conf":
            parser = configparser.ConfigParser(interpolation=None, allow_no_value=True)
            parser.read_string(text)
        elif path.name == "rabbitmq.conf":  # sysctl-like key = value lines
            lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
            assert all(" = " in ln for ln in lines), text
        elif path.suffix == ".yaml":
            cloud = yaml.safe_load(text)["clouds"]["microstack"]
            assert cloud["auth"]["password"] == config.admin_password
            assert cloud["auth"]["auth_url"] == "http://10.0.0.1:5000/v3"
    for template in {b.stdin_template for b in role.setup} - {""}:
        assert config.database_password in render.render_text(template, values)


def test_the_dhcp_agents_dnsmasq_logs_each_exchange_in_the_nodes_log_dir(
    tmp_path: Path, config: control_config.ControlConfig
) -> None:
    """A guest without a lease must leave a trace: dnsmasq's log of its
    DHCP exchanges (syslog is absent on a node) beside the agents' logs."""
    values = _values(tmp_path, config, CONTROL)
    paths = render.render_role(CONTROL, values, tmp_path / "etc")
    ini = next(p for p in paths if p.name == "dhcp_agent.ini")
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(ini.read_text())
    assert parser["DEFAULT"]["dnsmasq_base_log_dir"] == f"{values['log_dir']}/dnsmasq"


@pytest.mark.parametrize("role", DEFINITIONS.values(), ids=[r.value for r in DEFINITIONS])
def test_every_step_resolves_and_every_service_is_started_once(role: RoleDefinition) -> None:
    names = role.step_names()
    assert names[0] == "render-config" and len(set(names)) == len(names)
    started = [n.removeprefix(SERVICE_PREFIX) for n in names if n.startswith(SERVICE_PREFIX)]
    assert sorted(started) == sorted(s.name for s in role.services)
    for name in names[1:]:
        if not name.startswith(SERVICE_PREFIX):
            assert role.setup_step(name).title
    assert set(role.titles()) >= set(names)


@pytest.mark.parametrize("role", DEFINITIONS.values(), ids=[r.value for r in DEFINITIONS])
def test_commands_expand_without_a_secret_on_any_command_line(
    tmp_path: Path, config: control_config.ControlConfig, role: RoleDefinition
) -> None:
    values = _values(tmp_path, config, role)
    secrets = _secrets(config)
    for service in role.services:
        spec = steps.service_spec(service, values)
        assert not secrets & set(" ".join(spec.argv).split()), service.name
        assert not any(s in " ".join(spec.argv) for s in secrets), service.name
        for d in service.dirs:
            string.Template(d).substitute(values)
    for step in role.setup:
        for command in step.commands:
            argv = " ".join(render.expand(command, values))
            assert not any(s in argv for s in secrets), step.name
        for _key, value in step.env:
            string.Template(value).substitute(values)


def test_control_plan_resumes_after_the_last_recorded_step() -> None:
    plan = (enrolment.CREATE_CLUSTER, *CONTROL.step_names(), enrolment.DONE)
    done = plan[: plan.index("identity")]
    states = {step: StepState.DONE for step in done}
    states["identity"] = StepState.RUNNING  # interrupted: redone
    machine = Enrolment(plan, states, CONTROL.titles())
    commands = machine.resume()
    assert [c.step for c in commands if isinstance(c, Run)] == ["identity"]
    assert machine.current == "identity"
    # A finished plan runs nothing again.
    finished = Enrolment(plan, {step: StepState.DONE for step in plan})
    assert not [c for c in finished.resume() if isinstance(c, Run)]


def _noop(message: str) -> Awaitable[None]:
    async def run() -> None:
        return None

    return run()


def test_a_step_whose_result_exists_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "made"
    marker.write_text("")
    step = SetupStep("x", "make it", (("/bin/false",),), creates=str(marker))
    message = asyncio.run(
        steps.run_setup(step, {"openstack_prefix": "/x"}, tmp_path / "logs", _noop)
    )
    assert "already done" in message


def test_a_failed_command_names_its_status_and_last_lines(tmp_path: Path) -> None:
    step = SetupStep("x", "fail", (("/bin/sh", "-c", "echo oops; exit 3"),))
    with pytest.raises(errors.ServiceFailed, match=r"(?s)exited with status 3.*oops"):
        asyncio.run(steps.run_setup(step, {"openstack_prefix": "/x"}, tmp_path / "logs", _noop))
    ok = SetupStep("y", "exists", (("/bin/sh", "-c", "exit 2"),), ok_codes=(0, 2))
    assert "done" in asyncio.run(
        steps.run_setup(ok, {"openstack_prefix": "/x"}, tmp_path / "logs", _noop)
    )


def test_stdin_carries_the_secret_not_the_command_line(
    tmp_path: Path, config: control_config.ControlConfig
) -> None:
    values = _values(tmp_path, config, CONTROL)
    out = tmp_path / "stdin.txt"
    step = SetupStep(
        "sql", "sql", (("/bin/sh", "-c", f"cat > {out}"),), stdin_template=("control/databases.sql")
    )
    asyncio.run(steps.run_setup(step, values, tmp_path / "logs", _noop))
    assert config.database_password in out.read_text()
    assert config.database_password not in (tmp_path / "logs" / "setup-sql.log").read_text()


def test_without_an_openstack_environment_every_control_step_is_skipped(
    tmp_path: Path, config: control_config.ControlConfig
) -> None:
    from microstackd.node.services import ProcessManager
    from microstackd.store import Store

    store = Store(tmp_path / "state")
    try:
        manager = ProcessManager(tmp_path / "logs")
        plane = ControlPlane(_daemon_config(tmp_path, prefix=None), store, manager)
        actions = plane.actions(lambda: config)
        assert set(actions) == set(CONTROL.step_names())

        async def run_all() -> list[object]:
            return [await action(None) for action in actions.values()]  # type: ignore[arg-type]

        results = asyncio.run(run_all())
        assert results == [Skipped(NO_ENVIRONMENT)] * len(actions)
    finally:
        store.close()


def test_compute_settings_follow_the_driver(config: control_config.ControlConfig) -> None:
    settings = control_config.issue_compute_settings(config, NODE, revocation_list=CRL)
    assert (settings["vif_plugging_is_fatal"], settings["compute_driver"]) == (
        "true",
        "libvirt.LibvirtDriver",
    )
    assert "glance_password" not in settings  # computes get only what they use
    assert set(COMPUTE.settings) <= set(settings)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_setup_logs_are_0640_from_their_creation_whatever_the_umask(
    tmp_path: Path, umask: int
) -> None:
    step = SetupStep("x", "mode", (("/bin/sh", "-c", "stat -L -c 'mode=%a' /proc/self/fd/1"),))
    old = os.umask(umask)
    try:
        asyncio.run(steps.run_setup(step, {"openstack_prefix": "/x"}, tmp_path / "logs", _noop))
    finally:
        os.umask(old)
    log = tmp_path / "logs" / "setup-x.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    assert "mode=640" in log.read_text()


def _install_step_with(fake: Path) -> SetupStep:
    """mariadb-install as the role has it, its mariadb-install-db replaced by ``fake``."""
    step = next(s for s in CONTROL.setup if s.name == "mariadb-install")
    commands = tuple(
        (str(fake), *argv[1:]) if argv[0].endswith("/mariadb-install-db") else argv
        for argv in step.commands
    )
    assert commands != step.commands
    return dataclasses.replace(step, commands=commands)


def _fake_install(path: Path, finishes: bool) -> Path:
    """A mariadb-install-db that writes into its --datadir, and either
    finishes or dies half-way (as when the daemon is killed)."""
    path.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in --datadir=*) d="${a#--datadir=}";; esac; done\n'
        'mkdir -p "$d/mysql" && echo half > "$d/mysql/first.frm"\n'
        + ('echo rest > "$d/mysql/user.frm"\n' if finishes else "exit 137\n")
    )
    path.chmod(0o755)
    return path


def test_a_mariadb_install_cut_short_is_not_taken_for_done(tmp_path: Path) -> None:
    values = {"state_path": str(tmp_path / "state"), "config_root": str(tmp_path / "etc"),
              "run_dir": str(tmp_path / "run"), "openstack_prefix": "/x"}  # fmt: skip
    datadir = tmp_path / "state" / "mysql"

    async def progress(message: str) -> None:
        return None

    dying = _install_step_with(_fake_install(tmp_path / "dies", finishes=False))
    with pytest.raises(errors.ServiceFailed):
        asyncio.run(steps.run_setup(dying, values, tmp_path / "logs", progress))
    assert not (datadir / "mysql").exists()  # what a redo checks: not done
    finishing = _install_step_with(_fake_install(tmp_path / "finishes", finishes=True))
    said = asyncio.run(steps.run_setup(finishing, values, tmp_path / "logs", progress))
    assert "done in" in said
    assert sorted(p.name for p in (datadir / "mysql").iterdir()) == ["first.frm", "user.frm"]
    assert not (tmp_path / "state" / "mysql.installing").exists()
    again = asyncio.run(steps.run_setup(finishing, values, tmp_path / "logs", progress))
    assert "already done" in again
