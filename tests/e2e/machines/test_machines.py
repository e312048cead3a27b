"""Machines, not processes: microstackd as a system service on machines with
systemd as PID 1, the role's services as real units (`pytest -m machines`).

Each node is a container (tests/e2e/machines/harness.py) in its own network
namespace on the test bridge. microstackd is installed in each the README's
way (scripts/install-service.sh from the wheels, `systemctl enable --now
microstackd`); the cluster is formed with microstackctl inside them; role
services are stand-ins, run by the systemd ServiceManager as units of their
own. The tests run in order on one cluster, and each leaves it whole.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.machines.conftest import Cluster, timings
from tests.e2e.machines.harness import Machine, processes_in_pid_ns

pytestmark = [pytest.mark.machines, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[3]
SOCKET = "/run/microstackd/microstackd.sock"
STANDINS = ("nova-compute", "neutron-openvswitch-agent")
UNITS = tuple(f"microstackd-{name}.service" for name in STANDINS)
CONFIG_ROOT = "/etc/microstackd/openstack"
DENIED = (
    f"Error: permission denied on {SOCKET}: run as root or as a member of the 'microstack' "
    "group (sudo usermod -aG microstack $USER, then log in again)\n"
)


def services_of(node: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in node["services"]}


def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def main_pid(machine: Machine, unit: str) -> int:
    return int(machine.show(unit, "MainPID")["MainPID"])


def all_running(cluster: Cluster, name: str) -> bool:
    node = cluster.node(name)
    states = {s["state"] for s in node["services"]}
    return node["state"] == "active" and states == {"running"} and len(node["services"]) == 2


# ------------------------------------------------------------ the unit --


def test_systemctl_start_returns_once_the_daemon_is_ready(cluster: Cluster) -> None:
    """Type=notify: a CLI call right after `systemctl start` returned succeeds
    at its first try, and systemd shows the daemon's status text."""
    for name, (_seconds, status) in cluster.enabled.items():
        assert status.returncode == 0, f"{name}: status right after enable --now: {status.stderr}"
        assert json.loads(status.stdout)["local"]["name"] == name
    machine = cluster.computes[1]
    machine.systemctl("stop", "microstackd")
    assert machine.run(["microstackctl", "status"]).returncode == 3  # the check can fail
    machine.systemctl("start", "microstackd")
    status = machine.run(["microstackctl", "status", "--format", "json"])
    assert status.returncode == 0, status.stderr
    local = json.loads(status.stdout)["local"]
    assert (local["name"], local["role"]) == ("compute2", "compute")
    props = machine.show("microstackd", "Type", "ActiveState", "SubState", "StatusText")
    assert props == {
        "Type": "notify",
        "ActiveState": "active",
        "SubState": "running",
        "StatusText": "node compute2 listening",
    }
    shown = machine.run(["systemctl", "status", "--no-pager", "microstackd"]).stdout
    assert re.search(r"Active: active \(running\)", shown), shown
    assert 'Status: "node compute2 listening"' in shown, shown


def test_role_services_are_units_of_their_own(cluster: Cluster) -> None:
    for machine in cluster.computes:
        listed = machine.systemctl("list-units", "--plain", "--no-legend", "microstackd-*")
        rows = sorted(line.split()[:4] for line in listed.splitlines())
        assert rows == sorted([unit, "loaded", "active", "running"] for unit in UNITS), listed
        for unit in UNITS:
            props = machine.show(unit, "Slice", "Type", "Restart", "FragmentPath")
            assert props == {
                "Slice": "microstackd.slice",
                "Type": "exec",
                "Restart": "on-failure",
                "FragmentPath": f"/run/systemd/system/{unit}",
            }
        lines = machine.run(
            ["journalctl", "--no-pager", "-o", "cat", "-u", UNITS[0]], check=True
        ).stdout
        assert "nova-compute stand-in: configuration complete" in lines
        assert all_running(cluster, machine.name)


def test_unit_files_carry_any_argument_exactly(cluster: Cluster) -> None:
    """The systemd backend's quoting, through the real systemd: what the
    service gets is what the spec said."""
    machine = cluster.computes[0]
    script = r"""
import asyncio, sys
from microstackd.node.services import ServiceSpec, SystemdManager
argv = ("a b", 'q"u', "back\\slash", "$HOME", "100%", "${X}", ";", "tab\there", "")
code = ("import json, os, sys, time; print('ARGV', json.dumps([sys.argv[1:], os.environ['WEIRD']]),"
        " flush=True); time.sleep(600)")
spec = ServiceSpec("quoting", (sys.executable, "-c", code, *argv),
                   env={"WEIRD": '%h $X "q" \\ ;'}, ready_pattern="^ARGV ", ready_after=0)
async def main():
    manager = SystemdManager()
    await manager.restart(spec)
    await manager.wait_ready(spec)
    await manager.stop(spec)
asyncio.run(main())
"""
    machine.run(["/opt/microstackd/bin/python", "-c", script], check=True)
    out = machine.run(
        ["journalctl", "--no-pager", "-o", "cat", "-u", "microstackd-quoting.service"], check=True
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("ARGV "))
    assert json.loads(line[5:]) == [
        ["a b", 'q"u', "back\\slash", "$HOME", "100%", "${X}", ";", "tab\there", ""],
        '%h $X "q" \\ ;',
    ]
    assert machine.run(["test", "-e", "/run/systemd/system/microstackd-quoting.service"]).returncode


def test_sigkill_of_the_daemon_is_restarted_and_changes_nothing_else(cluster: Cluster) -> None:
    machine = cluster.computes[0]
    before = machine.show("microstackd", "MainPID", "NRestarts")
    units_before = {unit: main_pid(machine, unit) for unit in UNITS}
    serial = cluster.node("compute1")["cert_serial"]
    # A role service's socket lives there; it must outlive the daemon.
    probe = "/run/microstackd/microstackd.services/probe"
    machine.run(["sh", "-c", f"mkdir -p {Path(probe).parent} && touch {probe}"], check=True)
    machine.systemctl("kill", "-s", "KILL", "microstackd")
    after = eventually(
        lambda: (
            (p := machine.show("microstackd", "MainPID", "NRestarts", "ActiveState"))
            and p["ActiveState"] == "active"
            and p["NRestarts"] == str(int(before["NRestarts"]) + 1)
            and p
        ),
        30,
        "systemd to restart microstackd",
    )
    assert after["MainPID"] != before["MainPID"]
    log = machine.run(["journalctl", "--no-pager", "-o", "cat", "-u", "microstackd"]).stdout
    assert "code=killed, status=9/KILL" in log
    # The role services were not touched; the node is still a member.
    assert {unit: main_pid(machine, unit) for unit in UNITS} == units_before
    assert machine.run(["test", "-e", probe]).returncode == 0
    local = cluster.status(machine)["local"]
    assert (local["name"], local["role"]) == ("compute1", "compute")
    eventually(lambda: all_running(cluster, "compute1"), 30, "compute1 active, 2/2 running")
    assert cluster.node("compute1")["cert_serial"] == serial


def test_a_stopped_role_unit_shows_on_the_control_and_comes_back(cluster: Cluster) -> None:
    machine = cluster.computes[0]
    unit = UNITS[0]
    pid = main_pid(machine, unit)
    machine.systemctl("stop", unit)
    stopped = eventually(
        lambda: (
            (s := services_of(cluster.node("compute1"))["nova-compute"])["state"] == "stopped" and s
        ),
        20,
        "the control to show nova-compute stopped",
    )
    assert re.fullmatch(
        r"nova-compute was stopped, not by microstackd; "
        r"microstackd starts it again at \d\d:\d\d:\d\d UTC",
        stopped["message"],
    ), stopped
    table = cluster.control.run(["microstackctl", "status"], check=True).stdout
    assert re.search(r"compute1 +compute +\S+ +active +1/2 ", table), table
    assert "compute1 nova-compute: nova-compute was stopped, not by microstackd; " in table
    back = eventually(
        lambda: (
            (s := services_of(cluster.node("compute1"))["nova-compute"])["state"] == "running" and s
        ),
        30,
        "the agent to start nova-compute again",
    )
    assert back["message"].startswith("started again by microstackd at ")
    assert back["message"].endswith(" after it was found stopped")
    assert machine.systemctl("is-active", unit).strip() == "active"
    assert main_pid(machine, unit) != pid
    warnings = [
        e["MESSAGE"]
        for e in machine.journal("-u", "microstackd", "-p", "warning")
        if e.get("SYSLOG_IDENTIFIER") == "microstackd"
    ]
    expected = "msg='service not running' service=nova-compute state=stopped"
    assert any(expected in m for m in warnings), warnings


# ----------------------------------------------------------- the group --


def test_the_microstack_group_may_use_the_cli_others_may_not(cluster: Cluster) -> None:
    control = cluster.control
    control.run(["useradd", "--create-home", "--groups", "microstack", "alice"], check=True)
    control.run(["useradd", "--create-home", "bob"], check=True)
    stat = control.run(["stat", "-c", "%U:%G %a", "/run/microstackd", SOCKET], check=True)
    assert stat.stdout.splitlines() == ["root:root 755", "root:microstack 660"]
    alice = control.run(["microstackctl", "status"], user="alice")
    assert alice.returncode == 0, alice.stderr
    assert re.search(r"^compute1 +compute", alice.stdout, re.M), alice.stdout
    bob = control.run(["microstackctl", "status"], user="bob")
    assert (bob.returncode, bob.stdout, bob.stderr) == (4, "", DENIED)
    # What the message says to do works (a new login: setpriv reads the groups anew).
    control.run(["usermod", "-aG", "microstack", "bob"], check=True)
    assert control.run(["microstackctl", "status"], user="bob").returncode == 0


# ---------------------------------------------------- hardening, journal --


def recorded_score() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    found = re.search(
        r"`systemd-analyze security microstackd\.service`[^.]*?rates it (\d\.\d)", text
    )
    assert found, "docs/architecture.md must record the unit's exposure score"
    return found.group(1)


def test_the_hardened_unit_lets_the_roles_write_what_they_must(cluster: Cluster) -> None:
    machine = cluster.computes[0]
    analysis = machine.run(["systemd-analyze", "security", "--no-pager", "microstackd.service"])
    score = re.search(
        r"Overall exposure level for microstackd\.service: (\d+\.\d)", analysis.stdout
    )
    assert score, analysis.stdout + analysis.stderr
    assert score.group(1) == recorded_score()
    pid = str(main_pid(machine, "microstackd"))

    def writable(path: str) -> bool:
        probe = (
            f"mkdir -p {path} && touch {path}/.microstackd-probe && rm {path}/.microstackd-probe"
        )
        return (
            machine.run(["nsenter", f"--target={pid}", "--mount", "sh", "-c", probe]).returncode
            == 0
        )

    # What the daemon writes for its roles: the rendered configuration, the
    # services' state, logs and sockets, and the role units.
    for path in (
        CONFIG_ROOT,
        "/var/lib/microstackd/services",
        "/var/lib/microstackd/logs",
        "/run/microstackd/microstackd.services",
        "/run/systemd/system",
        "/etc/microstackd",
    ):
        assert writable(path), f"the unit's sandbox does not let microstackd write {path}"
    for path in ("/usr/local", "/etc/systemd/system", "/opt/microstackd"):  # the sandbox is real
        assert not writable(path), f"the unit's sandbox lets microstackd write {path}"
    rendered = machine.run(
        ["stat", "-c", "%a %U", f"{CONFIG_ROOT}/nova/nova.conf.d/microstackd-compute.conf"],
        check=True,
    )
    assert rendered.stdout.strip() == "640 root"
    # The role services run outside the daemon's sandbox, in their own units.
    assert machine.show(UNITS[0], "ProtectSystem")["ProtectSystem"] == "no"


def test_logs_reach_the_journal_as_documented(cluster: Cluster) -> None:
    """docs/cli.md: key=value lines, no timestamp under journald, PRIORITY
    from the level; each role service under its own unit and name."""
    machine = cluster.computes[0]
    entries = [
        e
        for e in machine.journal("-u", "microstackd")
        if e.get("SYSLOG_IDENTIFIER") == "microstackd"
    ]
    assert entries
    levels = {"debug": "7", "info": "6", "warning": "4", "error": "3"}
    for entry in entries:
        message = entry["MESSAGE"]
        found = re.match(r"level=(\w+) logger=\S+", message)
        assert found and "time=" not in message, message
        assert entry["PRIORITY"] == levels[found.group(1)], entry
        assert entry["_SYSTEMD_UNIT"] == "microstackd.service"
    ready = [e["MESSAGE"] for e in entries if " msg=ready " in e["MESSAGE"]]
    assert ready and re.search(r" node=compute1 .* services=systemd$", ready[-1]), ready
    assert {e["PRIORITY"] for e in entries} >= {"6", "4"}  # the stopped unit's warning too
    role = machine.journal("-u", UNITS[0])
    assert {e.get("SYSLOG_IDENTIFIER") for e in role if e.get("_PID") != "1"} == {"nova-compute"}


# -------------------------------------------------------------- reboot --


def test_a_rebooted_compute_comes_back_active_without_a_rejoin(
    cluster: Cluster, pytestconfig: pytest.Config
) -> None:
    machine = cluster.computes[1]
    before = cluster.node("compute2")
    events = cluster.control.run(
        ["microstackctl", "watch", "compute2", "--format", "json"], check=True, timeout=30
    ).stdout.splitlines()
    machine.stop()
    assert machine.leftovers() == []
    started = machine.started_at
    machine.boot()
    assert machine.started_at > started
    ready = eventually(
        lambda: machine.systemctl("is-active", "microstackd", check=False).strip() == "active",
        60,
        "microstackd active after the reboot",
    )
    assert ready
    entered = (
        int(
            machine.show("microstackd", "ActiveEnterTimestampMonotonic")[
                "ActiveEnterTimestampMonotonic"
            ]
        )
        / 1e6
    )
    timings(pytestconfig)["reboot_to_ready_s"] = round(entered - machine.started_at, 2)
    timings(pytestconfig)["reboot_to_booted_s"] = round(machine.boot_seconds[-1], 2)
    for unit in UNITS:

        def active(unit: str = unit) -> bool:
            return machine.systemctl("is-active", unit, check=False).strip() == "active"

        assert eventually(active, 30, f"{unit} active after the reboot")
    eventually(lambda: all_running(cluster, "compute2"), 60, "compute2 active, 2/2 running")
    after = cluster.node("compute2")
    assert (after["cert_serial"], after["joined"]) == (before["cert_serial"], before["joined"])
    again = cluster.control.run(
        ["microstackctl", "watch", "compute2", "--format", "json"], check=True, timeout=30
    ).stdout.splitlines()
    assert again == events, "the reboot must not have enrolled compute2 again"
    boots = machine.run(["journalctl", "--list-boots", "--no-pager"], check=True).stdout
    assert len(re.findall(r"^ *-?\d+ [0-9a-f]{32} ", boots, re.M)) == 2, boots


# ----------------------------------------------------------- teardown --


def test_a_killed_nspawn_leaves_nothing_after_teardown(
    new_machines: Callable[..., list[Machine]],
) -> None:
    """The harness's hard path: nspawn killed (as when a test run is), the
    container's init survives it in its own session; ``close`` must still
    leave no process, no mount and nothing in /run/systemd/nspawn."""
    [machine] = new_machines("scratch")
    assert machine.nspawn is not None and machine.pid_ns is not None
    os.killpg(machine.nspawn.pid, signal.SIGKILL)
    machine.nspawn.wait(10)
    assert processes_in_pid_ns(machine.pid_ns), "the container outlives nspawn: close() must end it"
    machine.close()
    assert machine.leftovers() == []
    assert processes_in_pid_ns(machine.pid_ns) == []
