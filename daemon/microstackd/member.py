"""A node joining a cluster: bootstrap trust with the control through the
password, then run (and relay) the enrolment the control orchestrates.

Local events (seq 0) say what this node is doing before the control has a
record of it; every later event comes from the control, already persisted
there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

from microstack_api.v1 import cluster_pb2 as pb
from microstackd import credentials, errors, security, validate
from microstackd.config import DaemonConfig
from microstackd.credentials import CA_CERT, NODE_CERT, NODE_KEY
from microstackd.model import ClusterRecord, EventRecord, NodeRecord, Role, StepState
from microstackd.rpc import peer
from microstackd.store import Store

log = logging.getLogger(__name__)

BOOTSTRAP = "bootstrap"
#: meta key holding the last enrolment state this node saw from its control.
ENROLMENT_META = "enrolment"


class Member:
    def __init__(
        self, config: DaemonConfig, store: Store, on_member: Callable[[], Awaitable[None]]
    ) -> None:
        self._config = config
        self._store = store
        self._on_member = on_member
        self._joining = False

    def _local(self, state: StepState, message: str, percent: int = 0) -> EventRecord:
        return EventRecord(
            node=self._config.node_name,
            seq=0,
            step=BOOTSTRAP,
            state=state,
            message=message,
            percent=percent,
            time=time.time(),
        )

    async def join(self, control: str, password: str, address: str) -> AsyncIterator[EventRecord]:
        host, port = validate.host_port(control, "control address")
        address = validate.ip_address(address, "node address")
        cluster = self._store.cluster()
        if cluster is not None:
            if cluster.role is Role.CONTROL:
                raise errors.AlreadyInitialised(
                    f"this node is the control node of cluster {cluster.cluster_id}; "
                    "it cannot join another cluster"
                )
            if self._store.get_meta(ENROLMENT_META) == "active":
                raise errors.AlreadyInitialised(
                    f"this node is already a member of cluster {cluster.cluster_id} "
                    f"(control {cluster.control_name} at {cluster.control_address})"
                )
            if cluster.control_address != host:
                raise errors.AlreadyInitialised(
                    f"this node holds a certificate of cluster {cluster.cluster_id} at "
                    f"{cluster.control_address}, not {host}"
                )
        if self._joining:
            raise errors.AlreadyInitialised("a join is already running on this node")
        self._joining = True
        try:
            if cluster is None:
                validate.password(password)
                async for event in self._bootstrap(host, port, password, address):
                    yield event
            else:
                yield self._local(
                    StepState.DONE,
                    f"already holds a certificate of cluster {cluster.cluster_id}; "
                    "resuming the enrolment",
                    100,
                )
            async for event in self._enrol():
                yield event
        finally:
            self._joining = False

    async def _bootstrap(
        self, host: str, port: int, password: str, address: str
    ) -> AsyncIterator[EventRecord]:
        where = validate.format_host_port(host, port)
        name = self._config.node_name
        yield self._local(StepState.RUNNING, f"contacting the control node at {where}")
        cert_pem = await peer.fetch_bootstrap_certificate(host, port)
        seen = security.fingerprint(cert_pem)
        yield self._local(
            StepState.RUNNING,
            f"control presented certificate {seen[:16]}…; proving the cluster password",
            20,
        )
        hello = security.Hello(node_name=name, address=address, hostname=self._config.hostname)
        key = security.generate_key()
        async with peer.BootstrapCall(host, port, cert_pem) as call:
            challenge = await call.hello(hello, self._config.cluster_port)
            verifier = await asyncio.to_thread(security.derive_verifier, password, challenge.kdf)
            exchange = security.JoinerExchange(
                verifier, challenge.cluster_id, challenge.kdf, hello, seen, challenge.pake_message
            )
            csr = security.make_csr(key, name)
            pake_message, confirmation = exchange.response(csr)
            result = await call.respond(pake_message, csr, confirmation)
            exchange.check_result(
                result.certificate_pem,
                result.ca_certificate_pem,
                result.control_name,
                result.cluster_port,
                result.confirmation,
            )
        ca = security.load_cert(result.ca_certificate_pem)
        security.verify_issued_by(ca, security.load_cert(result.certificate_pem), _utcnow())
        self._store.write_secret(NODE_KEY, security.key_to_pem(key))
        self._store.write_secret(NODE_CERT, result.certificate_pem)
        self._store.write_secret(CA_CERT, result.ca_certificate_pem)
        self._store.set_meta({ENROLMENT_META: "enrolling", "address": address})
        self._store.set_cluster(
            ClusterRecord(
                cluster_id=challenge.cluster_id,
                role=Role.COMPUTE,
                control_name=result.control_name,
                control_address=host,
                bootstrap_port=port,
                cluster_port=result.cluster_port,
                ca_fingerprint=security.fingerprint(ca),
                ca_not_after=ca.not_valid_after_utc.timestamp(),
            )
        )
        log.info("bootstrap complete cluster=%s control=%s", challenge.cluster_id, where)
        await self._on_member()
        yield self._local(
            StepState.DONE,
            f"trusted: certificate issued by cluster {challenge.cluster_id} "
            f"(CA {security.fingerprint(ca)[:16]}…)",
            100,
        )

    async def _enrol(self) -> AsyncIterator[EventRecord]:
        cluster = self._store.cluster()
        assert cluster is not None
        client = peer.ControlClient(cluster, credentials.load(self._store))
        try:
            async for event in client.enrol():
                if event.final:
                    state = "active" if event.state is StepState.DONE else "failed"
                    self._store.set_meta({ENROLMENT_META: state})
                yield event
        finally:
            await client.close()

    async def status(self) -> tuple[pb.ClusterInfo, list[NodeRecord]]:
        cluster = self._store.cluster()
        if cluster is None:
            raise errors.NotInitialised()
        client = peer.ControlClient(cluster, credentials.load(self._store))
        try:
            info, nodes = await client.status()
        finally:
            await client.close()
        return info, nodes


def _utcnow() -> datetime:
    return datetime.now(UTC)
