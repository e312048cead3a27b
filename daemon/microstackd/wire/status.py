"""Domain errors on the wire: each ``errors.MicrostackError`` class travels as
its gRPC status code (the class's ``code``), its message as the details, and
its class name in the ``microstackd-error`` trailer, so the calling side
raises the same class again (``peers/errors.py``). No trailer means the call
failed below microstackd (transport, TLS, a deadline)."""

from __future__ import annotations

import grpc

from microstackd import errors

#: Trailing metadata key naming the microstackd error class of a failed call.
ERROR_METADATA = "microstackd-error"
#: Trailing metadata key of a ``ControlBusy``: seconds until the caller's turn.
RETRY_AFTER_METADATA = "microstackd-retry-after"


def error_trailers(error: errors.MicrostackError) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that carries ``error`` to the calling side."""
    if isinstance(error, errors.ControlBusy):
        return (
            (ERROR_METADATA, type(error).__name__),
            (RETRY_AFTER_METADATA, f"{error.retry_after:.3f}"),
        )
    return ((ERROR_METADATA, type(error).__name__),)


#: The class to raise for a status that came without a trailer (not from a
#: microstackd servicer: a proxy, a much older daemon, the transport).
BY_CODE: dict[grpc.StatusCode, type[errors.MicrostackError]] = {
    grpc.StatusCode.UNAUTHENTICATED: errors.WrongPassword,
    grpc.StatusCode.ABORTED: errors.EnrolmentFailed,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.ALREADY_EXISTS: errors.NameTaken,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: errors.NotControl,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.TooManyAttempts,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
}


def status_code(error: errors.MicrostackError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, error.code, grpc.StatusCode.INTERNAL)


def error_class(name: str) -> type[errors.MicrostackError] | None:
    """The error class a trailer names, or None for a name this side does not know."""
    found = getattr(errors, name, None)
    if isinstance(found, type) and issubclass(found, errors.MicrostackError):
        return found
    return None
