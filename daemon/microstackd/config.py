"""The daemon's settings, from flags (and later a config file)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path("/var/lib/microstackd")
DEFAULT_SOCKET = Path("/run/microstackd/microstackd.sock")
DEFAULT_LISTEN = "0.0.0.0:10002"


@dataclass(frozen=True)
class DaemonConfig:
    state_dir: Path
    socket: Path
    listen_host: str
    listen_port: int
    #: The mTLS port; by default the one after the bootstrap port.
    cluster_port: int
    node_name: str
    hostname: str
    #: Seconds a source address is locked out after its first failed bootstrap.
    bootstrap_backoff: float = 1.0
    #: Upper bound of that lock-out.
    bootstrap_backoff_max: float = 60.0
    #: Default time a join waits for an unreachable control, seconds.
    join_timeout: float = 600.0


def default_node_name() -> str:
    return socket.gethostname().split(".")[0].lower()
