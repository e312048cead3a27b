"""``status``'s hand-written HTTP/2 call (``microstackctl.unary``) against a
real daemon: what it prints and how it fails must be what the grpcio path
(``api.Api.status``) gives, byte for byte and exit code for exit code."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.integration.harness import MICROSTACKCTL, Node

#: The same command, with the call made by grpcio (api.py) instead.
GRPCIO_STATUS = (
    "import sys\n"
    "from microstackctl import api, cli, cmd_status\n"
    "cmd_status.fetch = lambda socket: api.connect(socket).status()\n"
    "sys.argv = ['microstackctl', *sys.argv[1:]]\n"
    "cli.run()\n"
)


def both(sock: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], ...]:
    """``microstackctl --socket SOCK ARGS``, by the CLI and by the grpcio path."""
    argv = ["--socket", str(sock), *args]
    env = {**os.environ, "COLUMNS": "120"}
    run = dict(capture_output=True, text=True, timeout=60, env=env)
    ours = subprocess.run([MICROSTACKCTL, *argv], **run)  # type: ignore[call-overload]
    theirs = subprocess.run([sys.executable, "-c", GRPCIO_STATUS, *argv], **run)  # type: ignore[call-overload]
    return ours, theirs


def test_table_and_json_are_those_of_the_grpcio_path(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    compute = make_node("cmp1")
    compute.join(control, password_file)
    for args in (["status"], ["status", "--format", "json"]):
        ours, theirs = both(control.socket, *args)
        assert theirs.returncode == 0, theirs.stderr
        assert ours.returncode == 0, ours.stderr
        assert ours.stdout == theirs.stdout
        assert "cmp1" in ours.stdout
        assert ours.stderr == theirs.stderr == ""


def test_a_daemon_not_in_a_cluster_answers_as_by_grpcio(make_node: Callable[..., Node]) -> None:
    fresh = make_node("fresh")
    ours, theirs = both(fresh.socket, "status")
    assert ours.returncode == theirs.returncode == 0
    assert "not part of a cluster" in ours.stdout
    assert (ours.stdout, ours.stderr) == (theirs.stdout, theirs.stderr)


def test_a_daemon_error_is_mapped_as_by_grpcio(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    compute = make_node("cmp1")
    compute.join(control, password_file)
    control.stop()  # the compute's daemon answers, with an error of its own
    ours, theirs = both(compute.socket, "status")
    assert ours.returncode != 0
    assert (ours.returncode, ours.stdout, ours.stderr) == (
        theirs.returncode,
        theirs.stdout,
        theirs.stderr,
    )


def test_a_stopped_daemon_is_lost_with_exit_3(control: Node) -> None:
    control.stop(signal.SIGKILL)  # its socket stays, nothing listens on it
    assert control.socket.exists()
    ours, theirs = both(control.socket, "status")
    lost = f"Error: lost microstackd at {control.socket}: is it running? ("
    assert ours.returncode == theirs.returncode == 3
    assert ours.stderr.startswith(lost), ours.stderr
    assert theirs.stderr.startswith(lost), theirs.stderr


def test_a_socket_that_does_not_answer_http2_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    try:
        ours = subprocess.Popen(
            [MICROSTACKCTL, "--socket", str(path), "status"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # not a frame header
        conn.close()
        _, err = ours.communicate(timeout=30)
    finally:
        listener.close()
    assert ours.returncode == 3
    assert err.startswith(f"Error: lost microstackd at {path}: is it running? ("), err
