"""The real daemon tells systemd it is ready, and that it is stopping.

systemd/microstackd.service is ``Type=notify``: systemd holds back units
ordered after microstackd (and ``systemctl start`` itself) until READY=1, so
READY=1 must come only once the admin socket and the bootstrap port accept
connections; STOPPING=1 must come as soon as SIGTERM is handled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.launcher import READY, tool


def _messages(sock: socket.socket, until: bytes, timeout: float) -> list[bytes]:
    """Every datagram received until one holds the assignment ``until``."""
    deadline = time.monotonic() + timeout
    seen: list[bytes] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            datagram = sock.recv(4096)
        except TimeoutError:
            break
        seen.append(datagram)
        if until in datagram.split(b"\n"):
            return seen
    raise AssertionError(f"no {until.decode()} within {timeout:g} s; received {seen!r}")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield sock, path


def test_ready_once_listening_then_stopping_on_sigterm(
    tmp_path: Path, notify_socket: tuple[socket.socket, Path]
) -> None:
    sock, notify_path = notify_socket
    admin = tmp_path / "s.sock"
    log = tmp_path / "daemon.log"
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                tool("microstackd"),
                "--state-dir",
                str(tmp_path / "state"),
                "--socket",
                str(admin),
                "--listen",
                "127.0.0.1:0",
                "--node-name",
                "notified",
                "--service-manager",
                "process",
                "--config-root",
                str(tmp_path / "etc"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        try:
            ready = _messages(sock, b"READY=1", timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon log ---\n{log.read_text()}") from None
        assert not any(b"STOPPING=1" in m for m in ready)
        # READY=1 promises the admin socket and the bootstrap port (any free
        # one, as asked: read back from the ready line) listen.
        found = READY.search(log.read_bytes())
        assert found is not None, log.read_text()
        port = int(found.group(1).rpartition(b":")[2])
        assert port > 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(admin))
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        assert proc.poll() is None

        proc.send_signal(signal.SIGTERM)
        stopping = _messages(sock, b"STOPPING=1", timeout=30)
        assert not any(b"READY=1" in m.split(b"\n") for m in stopping)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
