"""Model records to and from protobuf messages: the only place that knows both."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from microstack_api.v1 import cluster_pb2 as pb
from microstackd.model import (
    AgentStep,
    BootstrapResult,
    ClusterRecord,
    EventRecord,
    NodeRecord,
    NodeState,
    Role,
    ServiceRecord,
    StepState,
    TokenRecord,
    TrustedCA,
    Unfinished,
)

ROLE_TO_PB = {
    Role.NONE: pb.ROLE_UNSPECIFIED,
    Role.CONTROL: pb.ROLE_CONTROL,
    Role.COMPUTE: pb.ROLE_COMPUTE,
}
ROLE_FROM_PB = {v: k for k, v in ROLE_TO_PB.items()}
STATE_TO_PB = {
    StepState.PENDING: pb.STEP_STATE_PENDING,
    StepState.RUNNING: pb.STEP_STATE_RUNNING,
    StepState.DONE: pb.STEP_STATE_DONE,
    StepState.FAILED: pb.STEP_STATE_FAILED,
    StepState.SKIPPED: pb.STEP_STATE_SKIPPED,
    StepState.WAITING: pb.STEP_STATE_WAITING,
}
STATE_FROM_PB = {v: k for k, v in STATE_TO_PB.items()}


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    if seconds:
        ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def seconds(ts: Timestamp) -> float:
    return ts.ToNanoseconds() / 1e9


def event_to_pb(event: EventRecord) -> pb.Event:
    return pb.Event(
        node=event.node,
        seq=event.seq,
        step=event.step,
        state=STATE_TO_PB[event.state],
        message=event.message,
        percent=event.percent,
        time=timestamp(event.time),
        final=event.final,
    )


def event_from_pb(event: pb.Event) -> EventRecord:
    return EventRecord(
        node=event.node,
        seq=event.seq,
        step=event.step,
        state=STATE_FROM_PB.get(event.state, StepState.PENDING),
        message=event.message,
        percent=event.percent,
        time=seconds(event.time),
        final=event.final,
    )


def node_to_pb(node: NodeRecord) -> pb.Node:
    return pb.Node(
        name=node.name,
        role=ROLE_TO_PB[node.role],
        address=node.address,
        state=node.state.value,
        message=node.message,
        cert_serial=node.cert_serial,
        cert_expires=timestamp(node.cert_not_after),
        joined=timestamp(node.joined),
        services=services_to_pb(node.services),
        last_seen=timestamp(node.last_seen),
        microstackd_version=node.version,
        api_version=node.api_version,
        version_refused=node.version_refused,
    )


class Encoded:
    """A response already in its wire form: the servicer's answer that
    ``api.access`` hands to grpc as it is, rather than a message grpc
    serialises. Status at 10,000 nodes built its nodes' bytes, parsed them
    into the response and serialised it all again (~8 ms of ~24 a call);
    its head and its nodes' bytes are now sent one after the other, which
    protocol buffers read as the one message."""

    __slots__ = ("data",)

    def __init__(self, head: Any, *parts: bytes) -> None:
        self.data = b"".join((head.SerializeToString(), *parts))


class NodesEncoder:
    """``node_to_pb`` of every node, as the wire bytes of a response's
    ``repeated Node`` field, reusing the bytes of each node that has not
    changed since the last call (each answer's nodes are mostly the last
    one's: at 10,000 nodes, converting them all took ~0.35 s a call).

    Protocol buffers let a message's fields come in any order and a
    repeated field's elements one after another: these bytes after a
    response's own (``Encoded``), or merged into it, are its nodes, in order."""

    def __init__(self, field_number: int) -> None:
        self._tag = _varint(field_number << 3 | 2)  # length-delimited
        #: node name -> (the record, its Nova entry, its encoded element)
        self._kept: dict[str, tuple[NodeRecord, dict[str, Any] | None, bytes]] = {}

    def encode(
        self, nodes: Iterable[NodeRecord], nova: dict[str, dict[str, Any]] | None = None
    ) -> bytes:
        kept: dict[str, tuple[NodeRecord, dict[str, Any] | None, bytes]] = self._kept
        fresh: dict[str, tuple[NodeRecord, dict[str, Any] | None, bytes]] = {}
        parts = []
        for node in nodes:
            view = nova.get(node.name) if nova and node.role is Role.COMPUTE else None
            old = kept.get(node.name)
            if old is not None and (old[0] is node or old[0] == node) and old[1] == view:
                # The same entry, not a new tuple: 10,000 tuples made per
                # call lived until the next and were promoted to the
                # collector's oldest generation, which then ran a full
                # collection (~17 ms at 10,000 nodes) every ~13 calls.
                fresh[node.name] = old
                parts.append(old[2])
                continue
            message = node_to_pb(node)
            if view is not None:
                message.nova.CopyFrom(nova_host_to_pb(view))
            body = message.SerializeToString()
            element = self._tag + _varint(len(body)) + body
            fresh[node.name] = (node, view, element)
            parts.append(element)
        self._kept = fresh  # nodes gone since are forgotten
        return b"".join(parts)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def node_from_pb(node: pb.Node) -> NodeRecord:
    return NodeRecord(
        name=node.name,
        role=ROLE_FROM_PB.get(node.role, Role.NONE),
        address=node.address,
        hostname="",
        state=NodeState(node.state),
        message=node.message,
        cert_serial=node.cert_serial,
        cert_not_after=seconds(node.cert_expires),
        joined=seconds(node.joined),
        last_seen=seconds(node.last_seen),
        services=tuple(services_from_pb(node.services)),
        version=node.microstackd_version,
        api_version=node.api_version,
        version_refused=node.version_refused,
    )


def token_to_pb(token: TokenRecord) -> pb.TokenInfo:
    return pb.TokenInfo(
        id=token.id,
        name=token.name,
        state=token.state_at(time.time()),
        created=timestamp(token.created),
        expires=timestamp(token.expires),
    )


def unfinished_to_pb(unfinished: Unfinished) -> pb.Unfinished:
    return pb.Unfinished(
        operation=unfinished.operation, message=unfinished.message, command=unfinished.command
    )


def cluster_to_pb(cluster: ClusterRecord) -> pb.ClusterInfo:
    return pb.ClusterInfo(
        id=cluster.cluster_id,
        control_name=cluster.control_name,
        control_address=cluster.control_address,
        bootstrap_port=cluster.bootstrap_port,
        cluster_port=cluster.cluster_port,
        ca_fingerprint=cluster.ca_fingerprint,
        ca_expires=timestamp(cluster.ca_not_after),
        cas=[
            pb.TrustedCA(fingerprint=c.fingerprint, expires=timestamp(c.not_after), state=c.state)
            for c in cluster.cas
        ],
    )


def cluster_from_pb(cluster: pb.ClusterInfo) -> ClusterRecord:
    """The control's cluster as it describes it (relayed by a compute's ``status``)."""
    return ClusterRecord(
        cluster_id=cluster.id,
        role=Role.CONTROL,
        control_name=cluster.control_name,
        control_address=cluster.control_address,
        bootstrap_port=cluster.bootstrap_port,
        cluster_port=cluster.cluster_port,
        ca_fingerprint=cluster.ca_fingerprint,
        ca_not_after=seconds(cluster.ca_expires),
        cas=tuple(TrustedCA(c.fingerprint, seconds(c.expires), c.state) for c in cluster.cas),
    )


def services_to_pb(services: Iterable[ServiceRecord]) -> list[pb.ServiceStatus]:
    return [
        pb.ServiceStatus(name=s.name, state=s.state, message=s.message, detail=s.detail)
        for s in services
    ]


def services_from_pb(services: Iterable[pb.ServiceStatus]) -> list[ServiceRecord]:
    return [ServiceRecord(s.name, s.state, s.message, s.detail) for s in services]


def agent_step_to_pb(step: AgentStep) -> pb.ApplyRoleResponse:
    return pb.ApplyRoleResponse(
        step=step.step,
        state=STATE_TO_PB[step.state],
        message=step.message,
        percent=step.percent,
        services=services_to_pb(step.services),
        final=step.final,
    )


def agent_step_from_pb(step: pb.ApplyRoleResponse) -> AgentStep:
    return AgentStep(
        step=step.step,
        state=STATE_FROM_PB.get(step.state, StepState.PENDING),
        message=step.message,
        percent=step.percent,
        services=tuple(services_from_pb(step.services)),
        final=step.final,
    )


def bootstrap_result_to_pb(result: BootstrapResult) -> pb.BootstrapResult:
    return pb.BootstrapResult(
        certificate_pem=result.certificate_pem,
        ca_certificate_pem=result.ca_certificate_pem,
        control_name=result.control_name,
        cluster_port=result.cluster_port,
        confirmation=result.confirmation,
    )


def bootstrap_result_from_pb(result: pb.BootstrapResult) -> BootstrapResult:
    return BootstrapResult(
        certificate_pem=result.certificate_pem,
        ca_certificate_pem=result.ca_certificate_pem,
        control_name=result.control_name,
        cluster_port=result.cluster_port,
        confirmation=result.confirmation,
    )


def nova_host_to_pb(view: dict[str, Any]) -> pb.NovaHost:
    """``cloud.ops.view``'s entry for one host."""
    return pb.NovaHost(
        compute_service=str(view.get("compute_service") or ""),
        hypervisor=str(view.get("hypervisor") or ""),
        running_instances=int(view.get("running_instances") or 0),
        drained=bool(view.get("drained")),
    )


def launch_result_to_pb(result: dict[str, Any]) -> pb.LaunchResult:
    """``cloud.launch.launch``'s result."""
    addresses = result.get("addresses") or {}
    return pb.LaunchResult(
        name=str(result.get("name", "")),
        id=str(result.get("id", "")),
        host=str(result.get("host", "")),
        status=str(result.get("status", "")),
        addresses=[
            pb.ServerAddresses(network=str(net), addresses=[str(a) for a in addrs])
            for net, addrs in sorted(addresses.items())
        ],
        floating_ip=str(result.get("floating_ip", "")),
        ssh_ready=bool(result.get("ssh_ready")),
        ssh_banner=str(result.get("ssh_banner", "")),
        active_after_seconds=float(result.get("active_after_seconds") or 0.0),
        ssh_after_seconds=float(result.get("ssh_after_seconds") or 0.0),
    )
