"""Service managers: how a node starts, watches and stops the services of its role.

Three backends, chosen by the daemon configuration (``make_manager``):

* ``systemd``: units driven with ``systemctl``, logs read from the journal;
  the units of microstackd's own role services (``microstackd-NAME.service``,
  the default) it writes itself (``systemd_units.py``);
* ``snap``: services of the MicroStack snap driven with ``snapctl``;
* ``process``: supervised child processes, for a sandbox on one machine. Each
  service runs in its own process group with its output appended to
  ``LOG_DIR/NAME.log``; it is restarted with capped exponential back-off when
  it exits on its own, and every child is stopped when the daemon shuts down
  (or, after a daemon was killed, when the next daemon starts the service).

Every failure an operator must act on is an ``errors.ServiceFailed`` whose
message names the service, its exit status when known, and its last log lines.
"""

from __future__ import annotations

import os
from pathlib import Path

from microstackd import errors
from microstackd.node.services.process import ProcessManager
from microstackd.node.services.snap import SnapManager
from microstackd.node.services.spec import (
    SYSTEMD_RUNTIME_DIR,
    TAIL_LINES,
    ServiceManager,
    ServiceSpec,
)
from microstackd.node.services.systemd import SystemdManager

__all__ = [
    "TAIL_LINES",
    "ProcessManager",
    "ServiceManager",
    "ServiceSpec",
    "SnapManager",
    "SystemdManager",
    "detect_kind",
    "make_manager",
]


def detect_kind() -> str:
    """The backend for ``auto``: snap inside the snap, systemd where systemd
    is the init system, otherwise plain child processes."""
    if os.environ.get("SNAP"):
        # Checked first: a snap runs on a systemd host, but its confinement
        # lets it drive its own services only through snapctl.
        return "snap"
    if SYSTEMD_RUNTIME_DIR.is_dir():
        return "systemd"
    return "process"


def make_manager(kind: str, *, log_dir: Path) -> ServiceManager:
    """The service manager named by the daemon configuration."""
    if kind == "auto":
        kind = detect_kind()
    if kind == "systemd":
        return SystemdManager()
    if kind == "snap":
        return SnapManager()
    if kind == "process":
        return ProcessManager(log_dir)
    raise errors.InvalidArgument(
        f"unknown service manager {kind!r}: expected systemd, snap, process or auto"
    )
