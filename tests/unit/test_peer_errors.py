"""A failed call to a peer comes back as the error class the peer raised
(its ``microstackd-error`` trailer), not a guess from the status code; a
peer that is not there is the caller's own "unreachable" error."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from microstackd import errors
from microstackd.peers.errors import error_from_rpc
from microstackd.wire.status import ERROR_METADATA, status_code


def _rpc_error(
    error: errors.MicrostackError | None, code: grpc.StatusCode | None = None
) -> aio.AioRpcError:
    """The AioRpcError a client sees when the peer raised ``error`` (None: no trailer)."""
    trailer = (
        aio.Metadata() if error is None else aio.Metadata((ERROR_METADATA, type(error).__name__))
    )
    return aio.AioRpcError(
        code or status_code(error),  # type: ignore[arg-type]
        aio.Metadata(),
        trailer,
        details=error.message if error is not None else "upstream connect error",
    )


def _unreachable(details: str) -> errors.MicrostackError:
    return errors.ControlUnreachable(f"cannot reach the control node at 10.0.0.1:10002: {details}")


@pytest.mark.parametrize(
    "raised",
    [
        errors.AlreadyInitialised("this node is already a member of cluster c1"),
        errors.NotInitialised("run init first"),
        errors.NotControl("not the control node"),
        errors.CloudError("no cloud configured"),
        errors.ConfigError("template x needs setting y"),
        errors.TokenRejected("this join token is expired"),
        errors.WrongPassword("the control node rejected the cluster password"),
        errors.PeerAuthenticationFailed(),
        errors.BootstrapProtocolError("the bootstrap must start with hello"),
        errors.InvalidArgument("node name 'X' is not valid"),
        errors.NameTaken("a node named 'n' is already in the cluster"),
        errors.ServiceFailed("nova-compute exited with status 1"),
        errors.EnrolmentFailed("the enrolment failed"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_the_class_the_peer_raised_comes_back(raised: errors.MicrostackError) -> None:
    got = error_from_rpc(_rpc_error(raised), _unreachable)
    assert type(got) is type(raised)
    assert got.message == raised.message


def test_a_prefix_names_the_peer() -> None:
    got = error_from_rpc(
        _rpc_error(errors.ServiceFailed("nova-compute exited with status 1")),
        _unreachable,
        prefix="node-1: ",
    )
    assert isinstance(got, errors.ServiceFailed)
    assert got.message == "node-1: nova-compute exited with status 1"


@pytest.mark.parametrize(
    "raised", [errors.ShuttingDown(), errors.ControlUnreachable("its own control is away")]
)
def test_a_peer_going_away_is_unreachable_whatever_it_said(raised: errors.MicrostackError) -> None:
    got = error_from_rpc(_rpc_error(raised), _unreachable)
    assert isinstance(got, errors.ControlUnreachable)
    assert got.message.startswith("cannot reach the control node at 10.0.0.1:10002: ")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (grpc.StatusCode.UNAVAILABLE, errors.ControlUnreachable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.ControlUnreachable),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.NotControl),
        (grpc.StatusCode.UNAUTHENTICATED, errors.WrongPassword),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.UNIMPLEMENTED, errors.MicrostackError),
    ],
)
def test_without_a_trailer_the_status_code_decides(
    code: grpc.StatusCode, expected: type[errors.MicrostackError]
) -> None:
    got = error_from_rpc(_rpc_error(None, code), _unreachable)
    assert type(got) is expected


def test_a_class_this_side_does_not_know_falls_back_to_the_code() -> None:
    exc = aio.AioRpcError(
        grpc.StatusCode.FAILED_PRECONDITION,
        aio.Metadata(),
        aio.Metadata((ERROR_METADATA, "SomethingNewer")),
        details="a newer daemon's error",
    )
    got = error_from_rpc(exc, _unreachable, default=errors.EnrolmentFailed)
    assert type(got) is errors.NotControl and got.message == "a newer daemon's error"


def test_a_busy_control_names_the_turn_it_gives_and_the_caller_gets_it_back() -> None:
    """``ControlBusy`` carries its retry-after in a trailer of its own."""
    from microstackd.wire.status import error_trailers

    busy = errors.ControlBusy("the control node is bootstrapping 256 nodes at once", 12.5)
    exc = aio.AioRpcError(
        status_code(busy),
        aio.Metadata(),
        aio.Metadata(*error_trailers(busy)),
        details=busy.message,
    )
    again = error_from_rpc(exc, _unreachable)
    assert isinstance(again, errors.ControlBusy)
    assert again.retry_after == 12.5 and again.message == busy.message
    # A peer's nonsense is bounded, not trusted.
    for sent, kept in (("-5", 0.1), ("1e9", 600.0), ("soon", 1.0)):
        odd = aio.AioRpcError(
            status_code(busy),
            aio.Metadata(),
            aio.Metadata((ERROR_METADATA, "ControlBusy"), ("microstackd-retry-after", sent)),
            details="busy",
        )
        got = error_from_rpc(odd, _unreachable)
        assert isinstance(got, errors.ControlBusy) and got.retry_after == kept


def test_a_status_grpc_lost_to_a_late_write_is_tried_again_not_a_failure() -> None:
    """grpc.aio replaces the peer's status with its own INTERNAL when a write
    was on its way as the peer ended the call (grpc/grpc#36066): a busy
    control's turn, under a burst of joins. The call is over and what the peer
    said is lost: the caller waits and tries again, as for an unreachable one."""
    lost = aio.AioRpcError(
        grpc.StatusCode.INTERNAL, aio.Metadata(), aio.Metadata(), details="Internal error from Core"
    )
    got = error_from_rpc(lost, _unreachable)
    assert type(got) is errors.ControlUnreachable
    assert "Internal error from Core" in got.message


def test_an_internal_error_the_peer_sent_is_not_taken_for_a_lost_status() -> None:
    """The peer's own INTERNAL (a bug there, said as such) is not tried again."""
    crashed = aio.AioRpcError(
        grpc.StatusCode.INTERNAL, aio.Metadata(), aio.Metadata(), details="internal error"
    )
    assert type(error_from_rpc(crashed, _unreachable)) is not errors.ControlUnreachable
    named = aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        aio.Metadata(),
        aio.Metadata((ERROR_METADATA, "EnrolmentFailed")),
        details="Internal error from Core",
    )
    assert type(error_from_rpc(named, _unreachable)) is errors.EnrolmentFailed
