"""Self-tests of the namespace harness (no cluster needed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox import netns
from sandbox.netns import Host, Network

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
INNER = Path(__file__).with_name("_selftest_inner.py")


def ping(src: Host, dst: Host) -> subprocess.CompletedProcess[str]:
    return src.run(["ping", "-c", "1", "-W", "1", dst.address], timeout=10)


def test_hosts_reach_each_other_and_nothing_else(network: Network) -> None:
    a, b = network.add_host("a"), network.add_host("b")
    assert a.address != b.address
    assert ping(a, b).returncode == 0
    assert ping(b, a).returncode == 0
    assert set(network.namespaces()) <= set(netns.list_namespaces())
    assert all(ns.startswith(netns.PREFIX) for ns in network.namespaces())
    # Only the test subnet is routable: anything else fails before a packet leaves.
    routes = a.run(["ip", "-j", "route", "show", "table", "all"]).stdout
    dests = {r["dst"] for r in json.loads(routes) if r.get("type", "unicast") == "unicast"}
    assert dests == {str(netns.SUBNET)}, dests
    outside = a.run(["ip", "route", "get", "192.0.2.1"])
    assert outside.returncode != 0 and "unreachable" in outside.stderr.lower()
    # A process runs inside the namespace, and teardown will find it there.
    proc = a.popen(["sleep", "600"])
    netns.wait_for(lambda: proc.pid in netns.namespace_pids(a.ns), 5, "sleep in a's namespace")
    assert a.run(["ip", "netns", "identify", str(proc.pid)]).stdout.strip() == a.ns
    assert netns.namespace_pids(b.ns) == []


@pytest.mark.parametrize("switch_side", [False, True], ids=["host-side", "switch-side"])
def test_link_down_and_up(network: Network, switch_side: bool) -> None:
    a, b = network.add_host("a"), network.add_host("b")
    assert ping(a, b).returncode == 0
    b.link_down(switch_side=switch_side)
    assert ping(a, b).returncode != 0
    b.link_up(switch_side=switch_side)
    netns.wait_for(lambda: ping(a, b).returncode == 0, 10, "b reachable again")


def test_start_daemon_failure_shows_the_log(network: Network) -> None:
    host = network.add_host("a")
    with pytest.raises(netns.CommandFailed) as failure:
        host.start_daemon("Not_A_Valid_Name", timeout=20)
    text = str(failure.value)
    assert "exited" in text and "before it was ready" in text, text
    assert "Not_A_Valid_Name" in text, text  # the daemon's own error, from its log
    assert host.daemon is None or host.daemon.poll() is not None


def _inner(test: str, record: Path) -> subprocess.Popen[str]:
    """A child pytest running one test of _selftest_inner.py, in its own session."""
    env = netns.clean_env({"MST_SELFTEST_RECORD": str(record)})
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-o", "addopts=",
         f"{INNER}::{test}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def _assert_gone(record: dict[str, object]) -> None:
    prefix = str(record["prefix"])
    left = [ns for ns in netns.list_namespaces() if ns.startswith(prefix)]
    assert left == [], f"namespaces left behind: {left}"
    assert not Path(str(record["rundir"])).exists()
    pids = [int(p) for p in record["pids"]]  # type: ignore[attr-defined]
    netns.wait_for(lambda: not any(netns.pid_alive(p) for p in pids), 5, f"{pids} to die")


def test_failing_test_cleans_up(netns_session: None, tmp_path: Path) -> None:
    record_path = tmp_path / "record.json"
    proc = _inner("test_fails_with_processes_running", record_path)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    assert "deliberate failure" in out and "1 failed" in out, out
    record = json.loads(record_path.read_text())
    assert len(record["namespaces"]) == 3 and len(record["pids"]) >= 3, record
    _assert_gone(record)


def test_killed_test_process_takes_its_processes_along(netns_session: None, tmp_path: Path) -> None:
    """SIGKILL runs no finalizer: the harness's children die anyway (PDEATHSIG);
    the namespaces, and any grandchildren in them, are found as stale and removed."""
    record_path = tmp_path / "record.json"
    proc = _inner("test_hangs_until_killed", record_path)
    try:
        netns.wait_for(record_path.exists, 60, "the inner test to start its processes")
        time.sleep(0.2)  # the record is written in one go, but be safe
        record = json.loads(record_path.read_text())
        # The child pytest's own pid names its namespaces.
        assert record["pid"] == proc.pid
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        direct = [int(p) for p in record["direct"]]
        netns.wait_for(lambda: not any(map(netns.pid_alive, direct)), 10, f"{direct} to die")
        stale = netns.stale_namespaces()
        assert set(record["namespaces"]) <= set(stale), (record, stale)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
        if record_path.exists():
            netns.reap(json.loads(record_path.read_text())["prefix"])
    _assert_gone(record)
