"""How the CLI maps a failed call to its local daemon to a message and an
exit code (docs/cli.md, Exit codes), from the status code and the
``microstackd-error`` trailing metadata the daemon sends (docs/api.md)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackctl import api, daemon_errors
from microstackctl.errors import EXIT_ERROR, EXIT_REJECTED, EXIT_UNREACHABLE, CommandError
from microstackd.wire import status

SOCKET = "/run/test.sock"


class Failed(grpc.RpcError):  # type: ignore[misc]  # grpc has no type information
    def __init__(self, code: grpc.StatusCode, details: str | None, error: str | None) -> None:
        self._code, self._details = code, details
        self._metadata = ((api.ERROR_METADATA, error),) if error else ()

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._metadata


def test_the_metadata_key_is_the_one_the_daemon_sends() -> None:
    assert api.ERROR_METADATA == status.ERROR_METADATA


def test_the_classes_that_mean_the_daemon_is_gone_are_the_daemons() -> None:
    # Only the local daemon's own ShuttingDown means it is going away: a
    # peer's (the control stopping) reaches the CLI as the daemon's
    # ControlUnreachable (peers/errors.py), which is not a lost daemon.
    for name in daemon_errors._DAEMON_GONE - {None}:
        assert name is not None
        found = status.error_class(name)
        assert found is not None, name
        assert status.status_code(found()) is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("code", "error", "exit_code", "lost"),
    [
        # The socket does not answer, or the daemon is stopping: it is gone.
        (grpc.StatusCode.UNAVAILABLE, None, EXIT_UNREACHABLE, True),
        (grpc.StatusCode.UNAVAILABLE, "ShuttingDown", EXIT_UNREACHABLE, True),
        # The daemon answered: it could not reach the control or a node.
        (grpc.StatusCode.UNAVAILABLE, "ControlUnreachable", EXIT_UNREACHABLE, False),
        (grpc.StatusCode.UNAVAILABLE, "NodeUnreachable", EXIT_UNREACHABLE, False),
        (grpc.StatusCode.UNAUTHENTICATED, "WrongPassword", EXIT_REJECTED, False),
        (grpc.StatusCode.UNAUTHENTICATED, "TokenRejected", EXIT_REJECTED, False),
        (grpc.StatusCode.PERMISSION_DENIED, "PermissionDenied", EXIT_REJECTED, False),
        (grpc.StatusCode.NOT_FOUND, "NotFound", EXIT_ERROR, False),
        (grpc.StatusCode.ALREADY_EXISTS, "NameTaken", EXIT_ERROR, False),
        (grpc.StatusCode.FAILED_PRECONDITION, "NotControl", EXIT_ERROR, False),
        (grpc.StatusCode.INTERNAL, None, EXIT_ERROR, False),
    ],
)
def test_status_and_error_class_give_the_exit_code(
    code: grpc.StatusCode, error: str | None, exit_code: int, lost: bool
) -> None:
    if error is not None:  # a class the daemon has, sent with the code it sends
        found = status.error_class(error)
        assert found is not None, error
        assert status.status_code(found()) is code
    mapped = api.command_error(Failed(code, "what happened", error), SOCKET)
    assert (mapped.exit_code, mapped.daemon_lost) == (exit_code, lost)
    # The grpc-free transport of ``status`` (unary.py) maps by the number.
    again = daemon_errors.call_error(code.value[0], "what happened", error, SOCKET)
    assert (again.message, again.exit_code, again.daemon_lost) == (
        mapped.message,
        exit_code,
        lost,
    )
    if lost:
        assert mapped.message == f"lost microstackd at {SOCKET}: is it running? (what happened)"
    else:
        assert mapped.message == "what happened"


def test_the_code_names_are_grpcs() -> None:
    assert daemon_errors.CODE_NAMES == tuple(
        code.name for code in sorted(grpc.StatusCode, key=lambda c: c.value[0])
    )
    for name in ("UNAVAILABLE", "UNAUTHENTICATED", "PERMISSION_DENIED", "INTERNAL"):
        assert getattr(daemon_errors, name) == grpc.StatusCode[name].value[0]


def test_no_details_names_the_status_code() -> None:
    mapped = api.command_error(Failed(grpc.StatusCode.DEADLINE_EXCEEDED, None, None), SOCKET)
    assert mapped.message == "DEADLINE_EXCEEDED"


class _Stub:
    """Methods that fail the way a grpc stub's do."""

    def __init__(self, error: grpc.RpcError) -> None:
        self.error = error

    def __getattr__(self, name: str) -> Any:
        def call(request: Any, timeout: float | None = None) -> Any:
            if name in ("Init", "Join", "Watch", "Launch"):

                def stream() -> Iterator[Any]:
                    raise self.error
                    yield  # a generator, as grpc's response iterators are

                return stream()
            raise self.error

        return call


@pytest.mark.parametrize(
    "call",
    [
        lambda a: a.status(),
        lambda a: list(a.init("pw", "10.0.0.1")),
        lambda a: list(a.join("ctl", "pw", "10.0.0.2")),
        lambda a: list(a.watch("n1", 0)),
        lambda a: a.remove("n1", False),
        lambda a: list(a.launch(pb.LaunchRequest(image="cirros"))),
        lambda a: a.create_token("n1", 60),
        lambda a: a.list_tokens(),
        lambda a: a.revoke_token("n1"),
    ],
)
def test_every_call_maps_its_failure(tmp_path: Path, call: Any) -> None:
    socket = tmp_path / "d.sock"
    socket.touch()
    client = api.Api(str(socket))
    failed = Failed(grpc.StatusCode.UNAUTHENTICATED, "wrong password", "WrongPassword")
    client.stub = cast(pb_grpc.AdminServiceStub, _Stub(failed))
    with pytest.raises(CommandError) as raised:
        call(client)
    assert (raised.value.message, raised.value.exit_code) == ("wrong password", EXIT_REJECTED)
    client.close()


def test_no_socket_is_unreachable_and_no_permission_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(CommandError) as raised:
        api.Api(str(tmp_path / "missing.sock"))
    assert raised.value.exit_code == EXIT_UNREACHABLE and raised.value.daemon_lost
    if os.geteuid() == 0:
        return  # root may open anything: the permission check cannot fail
    socket = tmp_path / "d.sock"
    socket.touch(mode=0)
    with pytest.raises(CommandError) as raised:
        api.Api(str(socket))
    assert raised.value.exit_code == EXIT_REJECTED
