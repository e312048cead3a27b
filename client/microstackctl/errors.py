"""The CLI's exit codes (docs/cli.md) and the one error its commands raise.

Kept free of grpc, protobuf and rich: ``cli.py`` imports it for every
command, ``--help`` included.
"""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REJECTED = 4


class CommandError(Exception):
    """What went wrong, for the operator, and the exit code it means.

    ``cli.py`` prints it as ``Error: MESSAGE`` on standard error and exits
    with ``exit_code``."""

    def __init__(
        self, message: str, exit_code: int = EXIT_ERROR, *, daemon_lost: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        #: The local daemon went away (as opposed to an error it reported).
        self.daemon_lost = daemon_lost


def usage(message: str) -> CommandError:
    """A usage error (exit 2): a bad option value, a missing argument."""
    return CommandError(message, EXIT_USAGE)
