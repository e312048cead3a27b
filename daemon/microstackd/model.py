"""The plain data every other module speaks: no I/O, no gRPC."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Role(enum.StrEnum):
    NONE = ""
    CONTROL = "control"
    COMPUTE = "compute"


class Access(enum.Enum):
    """Who may make a call (``api/access.py`` holds the table, per channel)."""

    LOCAL = "local"  # the Unix socket: file permissions authorise
    HEALTH = "health"  # anyone who reaches the port: grpc.health.v1, nothing else
    BOOTSTRAP = "bootstrap"  # anyone who reaches the bootstrap port, to prove the password
    MEMBER = "member"  # a node holding a valid, unrevoked cluster certificate
    CONTROL = "control"  # the control node of this node's cluster


class StepState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    WAITING = "waiting"

    @property
    def finished(self) -> bool:
        """A finished step is never run again on resume."""
        return self in (StepState.DONE, StepState.SKIPPED)


class NodeState(enum.StrEnum):
    PENDING = "pending"  # certificate issued, enrolment not started
    ENROLLING = "enrolling"
    ACTIVE = "active"
    FAILED = "failed"
    REMOVED = "removed"
    #: Shown, never stored: an active member whose heartbeats stopped.
    UNREACHABLE = "unreachable"
    #: Shown, never stored: a member whose certificate is close to expiry and
    #: was not renewed (its renewal fails, or it does not run).
    WARNING = "warning"


@dataclass(frozen=True)
class EventRecord:
    """One persisted step change of one node (seq 0: local, not persisted)."""

    node: str
    seq: int
    step: str
    state: StepState
    message: str
    percent: int
    time: float
    final: bool = False


@dataclass(frozen=True)
class NodeUpdate:
    """A change to one node's record, written with a batch of events."""

    name: str
    state: NodeState | None = None
    message: str = ""
    #: time.time() the node was last heard from, or None to leave it.
    last_seen: float | None = None


#: The states a service may be in.
SERVICE_STATES = ("running", "starting", "failed", "stopped")
#: What a member may report about its services (heartbeats, its agent's
#: answers): the control refuses more, a member clips its own to fit. A
#: failure message is a head and 20 log lines of at most 300 characters
#: (node/services/spec.py), about 6.2 KB; a role runs about 10 services.
MAX_SERVICES = 64
MAX_SERVICE_NAME = 100
MAX_SERVICE_MESSAGE = 8 * 1024
#: All the messages of one report together.
MAX_SERVICES_TEXT = 64 * 1024


def clip(text: str, limit: int = MAX_SERVICE_MESSAGE) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class ServiceRecord:
    """One service of a node's role, as its ServiceManager reports it."""

    name: str
    #: Exactly one of ``SERVICE_STATES``.
    state: str
    #: On failed: why (exit status and the last log lines).
    message: str = ""
    #: What it runs with, for a person (e.g. nova-compute's virt_type).
    detail: str = ""


@dataclass(frozen=True)
class AgentStep:
    """One step change of a node's agent applying a role, streamed to the control."""

    step: str
    state: StepState
    message: str
    percent: int = 0
    services: tuple[ServiceRecord, ...] = ()
    final: bool = False


@dataclass(frozen=True)
class BootstrapResult:
    """What the control hands a joiner that proved the password: its
    certificate, the cluster CA, where to reach the control, and the
    control's key confirmation over all of it."""

    certificate_pem: bytes
    ca_certificate_pem: bytes
    control_name: str
    cluster_port: int
    confirmation: bytes


@dataclass(frozen=True)
class NodeCredentials:
    """This node's key and certificate, and the cluster CA: what mTLS needs."""

    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes


@dataclass(frozen=True)
class Software:
    """What a node declares it runs: its microstackd version and the gRPC API
    it speaks (``versions``: the skew window)."""

    version: str
    api: str


@dataclass(frozen=True)
class NodeRecord:
    name: str
    role: Role
    address: str
    hostname: str
    state: NodeState
    message: str
    cert_serial: str
    cert_not_after: float
    joined: float
    last_seen: float = 0.0
    #: The node's mTLS port, where its agent listens (0: unknown).
    agent_port: int = 0
    services: tuple[ServiceRecord, ...] = field(default_factory=tuple)
    #: A renewed certificate issued but not used yet (hex serial; "" none).
    pending_serial: str = ""
    #: The microstackd version and API the node last declared ("": none yet).
    version: str = ""
    api_version: str = ""
    #: Why the control refuses that version (not stored: ``status`` works it out).
    version_refused: str = ""


@dataclass
class BootstrapCertificate:
    """The bootstrap port's certificate as served now: it renews itself, and
    what pins it (the exchange's transcript, new join tokens, ``status``)
    reads it here."""

    fingerprint: str
    #: time.time() it expires.
    not_after: float


@dataclass(frozen=True)
class TrustedCA:
    """A CA the cluster trusts (two during a CA rotation)."""

    fingerprint: str
    not_after: float
    #: "signing" or "retiring".
    state: str


@dataclass(frozen=True)
class ClusterRecord:
    """What every member knows about its cluster."""

    cluster_id: str
    role: Role
    control_name: str
    control_address: str
    bootstrap_port: int
    cluster_port: int
    ca_fingerprint: str
    ca_not_after: float
    #: Every CA trusted, for ``status`` (not stored: read from the trust bundle).
    cas: tuple[TrustedCA, ...] = ()


@dataclass(frozen=True)
class TokenRecord:
    """A join token as the control keeps it (never the secret)."""

    id: str
    name: str
    created: float
    expires: float
    #: "valid", "used" or "revoked" ("expired" is derived from ``expires``).
    state: str

    def state_at(self, now: float) -> str:
        return "expired" if self.state == "valid" and now >= self.expires else self.state


@dataclass(frozen=True)
class Unfinished:
    """A day-two operation left unfinished on the control, shown by ``status``."""

    operation: str
    #: What was done, what is left, and what it means for the cloud now.
    message: str
    #: The exact command that finishes it.
    command: str
