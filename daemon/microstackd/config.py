"""The daemon's settings, from flags (and later a config file)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path

from microstackd import versions
from microstackd.model import Software

DEFAULT_STATE_DIR = Path("/var/lib/microstackd")
DEFAULT_SOCKET = Path("/run/microstackd/microstackd.sock")
DEFAULT_LISTEN = "0.0.0.0:10002"
#: Where the MicroStack snap keeps its service configuration.
DEFAULT_CONFIG_ROOT = Path("/var/snap/microstack/common/etc")
#: The daemon's own config file; read when present.
DEFAULT_CONFIG_FILE = Path("/etc/microstackd/microstackd.yaml")
SERVICE_MANAGERS = ("auto", "systemd", "snap", "process")
#: Members of this group may use the admin socket (systemd/microstackd.sysusers).
SOCKET_GROUP = "microstack"


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
    #: Bootstrap connections, and open exchanges, one source may hold at once
    #: (a source: an IPv4 address or an IPv6 /64).
    bootstrap_per_source: int = 8
    #: Bootstrap connections in all (also bounded by the descriptor limit).
    bootstrap_connections: int = 1024
    #: Default time a join waits for an unreachable control, seconds.
    join_timeout: float = 600.0
    #: How role services are run: systemd, snap, process (or auto).
    service_manager: str = "auto"
    #: Where role configuration files are rendered.
    config_root: Path = DEFAULT_CONFIG_ROOT
    #: The environment holding the OpenStack executables (bin/nova-compute, ...);
    #: None: role services run as configuration-checking stand-ins.
    openstack_prefix: Path | None = None
    #: A member not heard from for this long is shown unreachable (members
    #: are asked to send a heartbeat every third of it), seconds.
    unreachable_after: float = 30.0
    #: (control) Members beat by UDP datagram (``control.beats``) rather
    #: than on their mTLS streams.
    heartbeat_datagrams: bool = True
    #: Fault-injection aid for tests: seconds to pause before running a step.
    step_delays: dict[str, float] = field(default_factory=dict)
    #: The control's cluster configuration (control.yaml); default under the state dir.
    control_config: Path | None = None
    #: (control) How long the node certificates it issues are valid, seconds.
    cert_lifetime: float = 365 * 86400.0
    #: How long this node's bootstrap-port certificate is valid, seconds.
    bootstrap_cert_lifetime: float = 3650 * 86400.0
    #: A certificate is renewed once less than this is left of it, seconds.
    renew_before: float = 30 * 86400.0

    @property
    def renewal_check(self) -> float:
        """Seconds between two looks at this node's certificates' expiry."""
        return max(0.5, min(self.renew_before / 8, 3600.0))

    #: The microstackd version this node declares: its own, unless a test
    #: makes it declare another (the hidden ``--report-version``).
    version: str = versions.VERSION

    @property
    def software(self) -> Software:
        return Software(self.version, versions.API_VERSION)

    @property
    def control_config_path(self) -> Path:
        return self.control_config or self.state_dir / "control.yaml"


def default_node_name() -> str:
    return socket.gethostname().split(".")[0].lower()


@dataclass
class Ports:
    """The ports this daemon listens on, known once it has bound them (the
    configuration may ask for 0: any free port)."""

    bootstrap: int = 0
    cluster: int = 0
