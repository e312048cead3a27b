"""Versions declared (stand-ins): every node reports its microstackd version
and API in its bootstrap, its heartbeats and ``status``; the control refuses a
join or a heartbeat from outside its skew window, saying which side to
upgrade. The daemons declare other versions through the tests-only hidden
flag ``--report-version``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from microstackd import versions
from sandbox.netns import Host, Network, init_control, join, wait_for

pytestmark = pytest.mark.e2e

EXIT_ERROR = 1


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}--- stderr\n{result.stderr}"


def node(status: dict[str, object], name: str) -> dict[str, str]:
    found = [n for n in status["nodes"] if n["name"] == name]  # type: ignore[attr-defined]
    assert found, status
    result: dict[str, str] = found[0]
    return result


def test_status_shows_every_node_s_version(network: Network, password_file: Path) -> None:
    control = network.add_host("control")
    control.start_daemon("control")
    init_control(control, password_file)
    compute = network.add_host("compute1")
    compute.start_daemon("compute1")
    join(compute, control, password_file)

    status = control.status()
    for name in ("control", "compute1"):
        entry = node(status, name)
        assert (entry["version"], entry["api_version"]) == (versions.VERSION, "v1"), status
        assert entry["version_refused"] == "", status
    # Relayed by the compute as the control knows it.
    assert node(compute.status(), "compute1")["version"] == versions.VERSION
    table = control.ctl("status").stdout
    assert "VERSION" in table and versions.VERSION in table, table


def test_a_compute_outside_the_window_is_refused_by_name(
    network: Network, password_file: Path
) -> None:
    control = network.add_host("control")
    control.start_daemon("control", extra_args=["--report-version", "0.3.0"])
    init_control(control, password_file)

    def start(name: str, version: str) -> Host:
        host = network.add_host(name)
        host.start_daemon(name, extra_args=["--report-version", version])
        return host

    ahead, behind, inside = start("ahead", "0.4.0"), start("behind", "0.1.9"), start("ok", "0.2.5")

    refused = join(ahead, control, password_file, check=False)
    assert refused.returncode == EXIT_ERROR, output(refused)
    assert "join refused: ahead runs microstackd 0.4.0" in refused.stderr, output(refused)
    assert "upgrade the control first" in refused.stderr, output(refused)

    refused = join(behind, control, password_file, check=False)
    assert refused.returncode == EXIT_ERROR, output(refused)
    assert "behind runs microstackd 0.1.9, too old" in refused.stderr, output(refused)
    assert "upgrade microstackd on behind to 0.3" in refused.stderr, output(refused)

    join(inside, control, password_file)
    status = control.status()
    names = {n["name"] for n in status["nodes"]}
    assert names == {"control", "ok"}, status  # a refused join leaves nothing behind
    assert node(status, "control")["version"] == "0.3.0"
    assert node(status, "ok")["version"] == "0.2.5"
    for host in (ahead, behind):
        assert host.status()["cluster"] == {}, host.status()

    # The member comes back ahead of its control: its heartbeats are refused
    # (it keeps sending them), and status says which side to upgrade.
    inside.stop_daemon()
    inside.start_daemon("ok", extra_args=["--report-version", "0.5.1"])

    def shown() -> bool:
        return node(control.status(), "ok")["version"] == "0.5.1"

    wait_for(shown, 30, "the control to record the version ok now declares")
    entry = node(control.status(), "ok")
    assert "ok runs microstackd 0.5.1, newer than its control's 0.3.0" in entry["version_refused"]
    assert "upgrade the control first" in entry["version_refused"], entry
    table = control.ctl("status").stdout
    assert "ok: ok runs microstackd 0.5.1" in table, table
    wait_for(
        lambda: "heartbeat refused: version outside the window" in inside.daemon_log(200),
        30,
        "the member to log the refusal",
    )
