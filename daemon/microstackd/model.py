"""The plain data every other module speaks: no I/O, no gRPC."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Role(enum.StrEnum):
    NONE = ""
    CONTROL = "control"
    COMPUTE = "compute"


class Access(enum.Enum):
    """Who may make a call (see rpc/auth.py for the table)."""

    LOCAL = "local"  # the Unix socket: file permissions authorise
    PUBLIC = "public"  # anyone who can reach the port
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


@dataclass(frozen=True)
class ServiceRecord:
    name: str
    state: str
    message: str = ""
    #: What it runs with, for a person (e.g. nova-compute's virt_type).
    detail: str = ""


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
