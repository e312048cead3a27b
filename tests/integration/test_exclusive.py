"""One daemon per state directory (issue 14, item 3): a second microstackd
started on the same state directory exits at once naming the first one's
PID, and the first keeps its socket, its ports and its services; and no two
daemons share a port (grpc's SO_REUSEPORT is off)."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from microstackd.node.services.spec import SERVICE_MARKER
from microstackd.trust import x509
from tests.integration.harness import Node


@pytest.fixture(autouse=True)
def _no_strays(tmp_path: Path) -> object:
    """A second daemon that ran (the bug) restarted the services as its own:
    stop every service process started under this test's directory."""
    yield
    marker = f"{SERVICE_MARKER}={tmp_path}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if any(item.startswith(marker) for item in environ):
            try:
                os.killpg(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _second(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a second daemon; one still running after ``timeout`` is killed with
    its whole process group (the services it took over), and fails the test."""
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"the second daemon was still running after {timeout:g} s:\n{err}"
        ) from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _service_pids(node: Node) -> dict[str, int]:
    pids = {}
    for path in (node.state_dir / "logs").glob("*.pid"):
        pids[path.stem] = int(path.read_text().split()[0])
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _presented(node: Node) -> str:
    return x509.fingerprint(ssl.get_server_certificate((node.address, node.port), timeout=5))


def _untouched(node: Node, pids: dict[str, int], fingerprint: str) -> None:
    assert node.socket.exists(), "the first daemon's socket was deleted"
    status = node.status()  # its socket answers
    assert status["local"]["name"] == node.name
    assert _presented(node) == fingerprint  # its bootstrap port is its own
    assert _service_pids(node) == pids, "its services were restarted"
    assert all(_alive(pid) for pid in pids.values()), "its services were stopped"


def test_a_second_daemon_on_the_same_state_dir_exits_at_once_naming_the_first(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    node = make_node("node-1")
    node.join(control, password_file)
    pids = _service_pids(node)
    assert pids, "the compute runs no services to watch"
    fingerprint = _presented(node)
    assert node.proc is not None and node.daemon is not None

    started = time.monotonic()
    second = _second(node.daemon.argv())  # exactly the first one's command line
    took = time.monotonic() - started
    assert second.returncode != 0, second.stderr
    assert str(node.proc.pid) in second.stderr, second.stderr
    assert str(node.state_dir) in second.stderr, second.stderr
    assert "Traceback" not in second.stderr, second.stderr
    assert took < 15, f"the second daemon took {took:.1f} s to give up"

    _untouched(node, pids, fingerprint)
    # Its mTLS port too: the control still reaches its agent (remove stops its services).
    assert node.proc.poll() is None
    assert control.status()["nodes"][1]["state"] == "active"


def test_a_second_daemon_on_the_same_ports_cannot_share_them(
    control: Node, make_node: Callable[..., Node], password_file: Path, tmp_path: Path
) -> None:
    """Another state directory, the same ports: refused at bind, nothing shared."""
    node = make_node("node-1")
    node.join(control, password_file)
    pids, fingerprint = _service_pids(node), _presented(node)
    other = tmp_path / "other"
    for ports in (
        ["--listen", node.endpoint, "--cluster-port", "0"],  # the bootstrap port
        ["--listen", f"{node.address}:0", "--cluster-port", str(node.cluster_port)],
    ):
        argv = [
            node.daemon.argv()[0] if node.daemon else "microstackd",
            "--state-dir", str(other / "state"), "--socket", str(other / "s.sock"),
            "--node-name", "intruder", "--config-root", str(other / "etc"),
            "--service-manager", "process", *ports,
        ]  # fmt: skip
        second = _second(argv)
        assert second.returncode != 0, f"{ports}: a second daemon shares the port\n{second.stderr}"
        assert "in use" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr and "__del__" not in second.stderr, second.stderr
    _untouched(node, pids, fingerprint)
