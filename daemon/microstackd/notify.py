"""sd_notify(3) without a library: tell systemd how start-up and shut-down go.

Rules:

1. A notification is one datagram of ``KEY=VALUE`` lines sent to the
   ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET``. A name starting with
   ``@`` is in the abstract namespace (the ``@`` becomes a NUL byte).
2. Without ``$NOTIFY_SOCKET`` (not started by systemd, or ``Type=`` is not
   ``notify``) every function does nothing.
3. Notifying never fails the caller: systemd being away must not stop the
   daemon. Failures are logged at debug level and ``False`` is returned.

``Type=notify`` with ``NotifyAccess=main`` in systemd/microstackd.service:
only the daemon's own process may notify, so the children it supervises
cannot declare it ready or stopping. ``take_socket`` goes further, as
sd_notify(3)'s ``unset_environment`` does: the daemon keeps the socket's
name to itself, so its children (bootstrap commands such as
``mariadb-install-db``, whose mariadbd notifies systemd, and the process
manager's services) never send systemd notifications it rejects.
"""

from __future__ import annotations

import logging
import os
import socket
import time

__all__ = ["notify", "ready", "reloading", "status", "stopping"]

log = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"
#: The socket's name once ``take_socket`` took it out of the environment.
_taken = ""


def take_socket() -> None:
    """Keep ``$NOTIFY_SOCKET`` for this process: remove it from the
    environment every child inherits."""
    global _taken
    _taken = os.environ.pop(ENV, "") or _taken


def _address(name: str) -> str | bytes:
    """The socket address for a ``$NOTIFY_SOCKET`` value (rule 1)."""
    if name.startswith("@"):
        return b"\0" + os.fsencode(name[1:])
    return name


def _one_line(text: str) -> str:
    """A value may not span lines: each line of a message is one assignment."""
    return " ".join(text.splitlines())


def notify(*assignments: str) -> bool:
    """Send ``KEY=VALUE`` assignments in one datagram; True if it was sent."""
    name = os.environ.get(ENV, "") or _taken
    if not name:
        return False
    message = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message, _address(name))
    except (OSError, ValueError) as exc:  # ValueError: an unencodable name
        log.debug("sd_notify to %s failed: %s", name, exc)
        return False
    return True


def ready(status: str = "") -> bool:
    """Start-up is over: the socket and the ports are listening."""
    return notify("READY=1", *(["STATUS=" + _one_line(status)] if status else []))


def stopping() -> bool:
    """Shut-down has begun."""
    return notify("STOPPING=1")


def reloading() -> bool:
    """Configuration is being reloaded; send ``ready()`` when it is done.

    ``MONOTONIC_USEC`` lets systemd (253+, ``Type=notify-reload``) tell this
    reload from an earlier one.
    """
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def status(text: str) -> bool:
    """A free-form line ``systemctl status`` shows."""
    return notify("STATUS=" + _one_line(text))
