"""How a failed call to the local daemon becomes the CLI's error, free of grpc.

Shared by the two transports: ``api.py`` (grpcio, every command) and
``unary.py`` (the hand-written HTTP/2 call ``status`` makes), so that a
failure gives the same message and exit code whichever carried it.
"""

from __future__ import annotations

import os

from microstackctl.errors import EXIT_ERROR, EXIT_REJECTED, EXIT_UNREACHABLE, CommandError

DEFAULT_SOCKET = "/run/microstackd/microstackd.sock"

#: Trailing metadata naming the daemon's error class of a failed call
#: (docs/api.md, "Status codes"; the daemon's ``wire.status.ERROR_METADATA``).
#: Its absence marks a failure of the transport, not one the daemon reported.
ERROR_METADATA = "microstackd-error"

#: gRPC status codes by number, with the names grpc gives them.
CODE_NAMES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
CANCELLED = 1
UNKNOWN = 2
DEADLINE_EXCEEDED = 4
PERMISSION_DENIED = 7
INTERNAL = 13
UNAVAILABLE = 14
UNAUTHENTICATED = 16

#: Error classes after which the local daemon is gone, as when it cannot be
#: reached at all: a command that follows a stream may wait and re-attach.
_DAEMON_GONE = frozenset({None, "ShuttingDown"})

_REJECTED = frozenset({UNAUTHENTICATED, PERMISSION_DENIED})


def socket_path(explicit: str | None) -> str:
    return explicit or os.environ.get("MICROSTACK_SOCKET") or DEFAULT_SOCKET


def call_error(
    code: int, details: str | None, error_class: str | None, socket: str
) -> CommandError:
    """The CLI's error for a call to the daemon at ``socket`` that ended
    with gRPC status ``code``, its ``details`` and the daemon's error class.

    UNAVAILABLE without a daemon error class (the socket does not answer)
    or from a daemon shutting down: the daemon is lost (exit 3); UNAVAILABLE
    the daemon reported (it could not reach the control or a node): exit 3;
    UNAUTHENTICATED, PERMISSION_DENIED: exit 4; anything else: exit 1, with
    the daemon's message.
    """
    name = CODE_NAMES[code] if 0 <= code < len(CODE_NAMES) else str(code)
    details = str(details or name)
    if code == UNAVAILABLE and error_class in _DAEMON_GONE:
        return CommandError(
            f"lost microstackd at {socket}: is it running? ({details})",
            EXIT_UNREACHABLE,
            daemon_lost=True,
        )
    if code == UNAVAILABLE:
        return CommandError(details, EXIT_UNREACHABLE)
    if code in _REJECTED:
        return CommandError(details, EXIT_REJECTED)
    return CommandError(details, EXIT_ERROR)


def permission_denied(path: str) -> CommandError:
    return CommandError(
        f"permission denied on {path}: run as root or as a member of the 'microstack' group "
        "(sudo usermod -aG microstack $USER, then log in again)",
        EXIT_REJECTED,
    )


def check_socket(path: str) -> None:
    """Fail as the CLI documents when ``path`` is no socket this user may use."""
    try:
        os.stat(path)
    except FileNotFoundError:
        raise CommandError(
            f"no microstackd socket at {path}: is microstackd running? "
            "(start it, or point --socket / MICROSTACK_SOCKET at its socket)",
            EXIT_UNREACHABLE,
            daemon_lost=True,
        ) from None
    except PermissionError:
        # The socket's directory is root:microstack 0750: others cannot even look.
        raise permission_denied(path) from None
    except OSError as exc:
        raise CommandError(
            f"cannot reach the microstackd socket at {path}: {exc.strerror or exc}",
            EXIT_UNREACHABLE,
            daemon_lost=True,
        ) from None
    if not os.access(path, os.R_OK | os.W_OK):
        raise permission_denied(path)
