"""A failed call to a peer, as the domain error the peer raised: the class
named in the ``microstackd-error`` trailer (``wire/status.py``), with the
peer's message. A call that failed for want of the peer (unreachable, a
deadline, the peer shutting down) is the caller's own "unreachable" error,
whatever the peer said: the caller waits and tries again."""

from __future__ import annotations

from collections.abc import Callable

import grpc
from grpc import aio

from microstackd import errors
from microstackd.wire.status import BY_CODE, ERROR_METADATA, RETRY_AFTER_METADATA, error_class

#: Statuses that mean "the peer is not there (now)".
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
#: What grpc.aio's client makes of a write that Core refuses because the call
#: is over (the peer ended it while the write was on its way): it replaces the
#: status the peer sent with this one, so what the peer said is lost
#: (grpc/grpc#36066, still so in 1.85). Under a burst of joins it is how many
#: of the control's "busy, come back at your turn" arrive; the call is over,
#: and the caller waits and tries again as for an unreachable peer.
LOST_STATUS = (grpc.StatusCode.INTERNAL, "Internal error from Core")


def trailer(exc: aio.AioRpcError, key: str = ERROR_METADATA) -> str:
    """A trailer the peer sent (by default the error class name), "" when there is none."""
    for name, value in exc.trailing_metadata() or ():
        if name == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


def error_from_rpc(
    exc: aio.AioRpcError,
    unreachable: Callable[[str], errors.MicrostackError],
    *,
    default: type[errors.MicrostackError] = errors.MicrostackError,
    prefix: str = "",
) -> errors.MicrostackError:
    """The domain error for a failed call: ``unreachable(details)`` when the
    peer could not be reached; else the peer's own class (``default`` when it
    named none this side knows, by status code first), its message after
    ``prefix``."""
    details = exc.details() or exc.code().name
    if exc.code() in UNREACHABLE:
        return unreachable(details)
    if (exc.code(), details) == LOST_STATUS and not trailer(exc):
        return unreachable(f"{details} (the call ended while this side was still writing)")
    cls = error_class(trailer(exc)) or BY_CODE.get(exc.code(), default)
    if cls is errors.ControlBusy:
        try:
            retry_after = min(max(float(trailer(exc, RETRY_AFTER_METADATA)), 0.1), 600.0)
        except ValueError:
            retry_after = 1.0
        return errors.ControlBusy(prefix + details, retry_after)
    return cls(prefix + details)
