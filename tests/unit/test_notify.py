"""sd_notify against real AF_UNIX datagram sockets: a path and an abstract name."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from microstackd import notify

Receiver = Callable[[], bytes]


def _bind(sock: socket.socket, address: str | bytes) -> None:
    sock.bind(address)
    sock.settimeout(2.0)


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Receiver]:
    """Bind a datagram socket, point $NOTIFY_SOCKET at it, return its reader."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if request.param == "path":
            path = tmp_path / "notify.sock"
            _bind(sock, str(path))
            monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        else:
            name = f"microstackd-test-{os.getpid()}-{secrets.token_hex(4)}"
            _bind(sock, b"\0" + name.encode())
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        yield lambda: sock.recv(4096)


def test_ready_without_status(notify_socket: Receiver) -> None:
    assert notify.ready() is True
    assert notify_socket() == b"READY=1"


def test_ready_with_status(notify_socket: Receiver) -> None:
    assert notify.ready("listening on 127.0.0.1:10002") is True
    assert notify_socket() == b"READY=1\nSTATUS=listening on 127.0.0.1:10002"


def test_stopping(notify_socket: Receiver) -> None:
    assert notify.stopping() is True
    assert notify_socket() == b"STOPPING=1"


def test_status(notify_socket: Receiver) -> None:
    assert notify.status("enrolling node-1") is True
    assert notify_socket() == b"STATUS=enrolling node-1"


def test_status_is_one_line(notify_socket: Receiver) -> None:
    # A newline would start a second assignment: "READY=1" smuggled in a status.
    notify.status("first\nREADY=1")
    assert notify_socket() == b"STATUS=first READY=1"


def test_reloading_carries_the_monotonic_clock(notify_socket: Receiver) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify.reloading() is True
    first, second = notify_socket().split(b"\n")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_one_datagram_per_call_in_order(notify_socket: Receiver) -> None:
    notify.ready("up")
    notify.stopping()
    assert notify_socket() == b"READY=1\nSTATUS=up"
    assert notify_socket() == b"STOPPING=1"


def test_unset_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready("x") is False
    assert notify.stopping() is False
    assert notify.status("x") is False
    assert notify.reloading() is False


def test_empty_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert notify.ready() is False


@pytest.mark.parametrize(
    "value",
    [
        "/nonexistent/microstackd/notify.sock",  # no such path
        "@microstackd-test-nobody-listens-here",  # no such abstract name
    ],
)
def test_never_raises_and_logs_at_debug(
    value: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    with caplog.at_level(logging.DEBUG, logger="microstackd.notify"):
        assert notify.ready("x") is False
        assert notify.stopping() is False
    assert caplog.records
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_a_regular_file_is_refused_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("")
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    assert notify.status("x") is False


def test_a_stream_socket_is_refused_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "stream.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        sock.listen()
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert notify.ready() is False


def test_a_taken_socket_is_used_but_not_inherited(
    notify_socket: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mariadbd (in a bootstrap command) notifies systemd if it finds the
    socket in its environment; systemd rejects that and logs about it."""
    import subprocess
    import sys

    monkeypatch.setattr(notify, "_taken", "")
    notify.take_socket()
    assert "NOTIFY_SOCKET" not in os.environ
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('NOTIFY_SOCKET'))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert child.stdout == "None\n"
    assert notify.ready("still heard") is True
    assert notify_socket() == b"READY=1\nSTATUS=still heard"
