"""A node joining a cluster: bootstrap trust with the control (through the
password or a join token), then follow — and relay — the enrolment the
control orchestrates; afterwards, send heartbeats.

Local events (seq 0) say what this node is doing before the control has a
record of it, or while it cannot reach the control; every other event comes
from the control, already persisted there, and is relayed exactly once: a
broken stream is re-attached from the last sequence number seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from microstack_api.v1 import cluster_pb2 as pb
from microstackd import credentials, errors, security, tokens, validate
from microstackd.config import DaemonConfig
from microstackd.credentials import CA_CERT, NODE_CERT, NODE_KEY
from microstackd.model import ClusterRecord, EventRecord, NodeRecord, Role, ServiceRecord, StepState
from microstackd.rpc import peer
from microstackd.store import Store

log = logging.getLogger(__name__)

BOOTSTRAP = "bootstrap"
#: meta key holding the last enrolment state this node saw from its control.
ENROLMENT_META = "enrolment"
#: Longest wait between two attempts to reach the control, seconds.
MAX_RETRY_DELAY = 10.0

ServicesProvider = Callable[[], Awaitable[list[ServiceRecord]]]


@dataclass(frozen=True)
class _Credential:
    """What proves this joiner: the password's verifier, or a token's."""

    password: str = ""
    token: tokens.JoinToken | None = None

    async def verifier(self, kdf: security.KdfParams) -> bytes:
        if self.token is not None:
            return self.token.verifier
        return await asyncio.to_thread(security.derive_verifier, self.password, kdf)


class Member:
    def __init__(
        self,
        config: DaemonConfig,
        store: Store,
        on_member: Callable[[], Awaitable[None]],
        services: ServicesProvider,
    ) -> None:
        self._config = config
        self._store = store
        self._on_member = on_member
        self._services = services
        self._joining = False
        self._heartbeat: asyncio.Task[None] | None = None
        #: Set to send the next heartbeat now rather than at its interval.
        self._beat_now = asyncio.Event()

    def _local(
        self, state: StepState, message: str, percent: int = 0, step: str = BOOTSTRAP
    ) -> EventRecord:
        return EventRecord(
            node=self._config.node_name,
            seq=0,
            step=step,
            state=state,
            message=message,
            percent=percent,
            time=time.time(),
        )

    # ------------------------------------------------------------ join --

    async def join(
        self,
        control: str,
        password: str,
        address: str,
        token_text: str = "",
        timeout: float = 0,
    ) -> AsyncIterator[EventRecord]:
        timeout = timeout or self._config.join_timeout
        address = validate.ip_address(address, "node address")
        if token_text:
            token = tokens.decode(token_text)
            if token.name != self._config.node_name:
                raise errors.InvalidArgument(
                    f"this join token is for a node named {token.name!r}, but this node is "
                    f"{self._config.node_name!r} (start microstackd with --node-name "
                    f"{token.name}, or make a token for {self._config.node_name})"
                )
            targets = [
                validate.host_port(c, "control address in the token") for c in token.controls
            ]
            credential = _Credential(token=token)
        else:
            targets = [validate.host_port(control, "control address")]
            credential = _Credential(password=validate.password(password))
        if self._joining:
            raise errors.AlreadyInitialised("a join is already running on this node")
        self._joining = True
        try:
            if await self._still_member(targets[0][0]):
                yield self._local(
                    StepState.DONE,
                    "already holds a certificate of this cluster; resuming the enrolment",
                    100,
                )
            else:
                async for event in self._bootstrap_with_retry(
                    targets, credential, address, timeout
                ):
                    yield event
            async for event in self.follow(None, timeout):
                yield event
        finally:
            self._joining = False

    async def _still_member(self, host: str) -> bool:
        """Whether this node's membership is one to resume (True), or it has
        none to speak of (False). Refuses a join that would clash with it."""
        cluster = self._store.cluster()
        if cluster is None:
            return False
        if cluster.role is Role.CONTROL:
            raise errors.AlreadyInitialised(
                f"this node is the control node of cluster {cluster.cluster_id}; "
                "it cannot join another cluster"
            )
        if self._store.get_meta(ENROLMENT_META) != "active":
            if cluster.control_address != host:
                raise errors.AlreadyInitialised(
                    f"this node holds a certificate of cluster {cluster.cluster_id} at "
                    f"{cluster.control_address}, not {host}"
                )
            return True
        try:
            await self.status()
        except errors.PermissionDenied:
            # The control no longer knows this certificate: the node was removed.
            log.info(
                "certificate refused by the control; forgetting cluster=%s", cluster.cluster_id
            )
            await self.forget()
            return False
        except errors.ControlUnreachable:
            pass
        raise errors.AlreadyInitialised(
            f"this node is already a member of cluster {cluster.cluster_id} "
            f"(control {cluster.control_name} at {cluster.control_address})"
        )

    async def _bootstrap_with_retry(
        self,
        targets: list[tuple[str, int]],
        credential: _Credential,
        address: str,
        timeout: float,
    ) -> AsyncIterator[EventRecord]:
        """Bootstrap, waiting with back-off while the control is unreachable
        or not initialised yet."""
        deadline = time.monotonic() + timeout
        attempt, delay = 0, 1.0
        while True:
            host, port = targets[attempt % len(targets)]
            where = validate.format_host_port(host, port)
            try:
                async for event in self._bootstrap(host, port, credential, address):
                    yield event
                return
            except (errors.ControlUnreachable, errors.NotControl) as exc:
                attempt += 1
                if time.monotonic() + delay > deadline:
                    raise type(exc)(
                        f"{exc.message} — gave up after waiting {timeout:.0f} s "
                        f"({attempt} attempts); check the address and that the control is "
                        "initialised, or pass a longer --timeout"
                    ) from exc
                yield self._local(
                    StepState.WAITING,
                    f"waiting for the control node at {where} (attempt {attempt}): {exc.message}",
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _bootstrap(
        self, host: str, port: int, credential: _Credential, address: str
    ) -> AsyncIterator[EventRecord]:
        where = validate.format_host_port(host, port)
        name = self._config.node_name
        yield self._local(StepState.RUNNING, f"contacting the control node at {where}")
        cert_pem = await peer.fetch_bootstrap_certificate(host, port)
        seen = security.fingerprint(cert_pem)
        token = credential.token
        if token is not None and seen != token.bootstrap_fingerprint:
            raise errors.PeerAuthenticationFailed(
                f"the control at {where} presented certificate {seen[:16]}…, not the "
                f"{token.bootstrap_fingerprint[:16]}… the join token names: not sending anything "
                "that depends on the token"
            )
        proof = "the join token" if token else "the cluster password"
        yield self._local(
            StepState.RUNNING, f"control presented certificate {seen[:16]}…; proving {proof}", 20
        )
        hello = security.Hello(node_name=name, address=address, hostname=self._config.hostname)
        key = security.generate_key()
        async with peer.BootstrapCall(host, port, cert_pem) as call:
            challenge = await call.hello(
                hello, self._config.cluster_port, token.id if token else ""
            )
            verifier = await credential.verifier(challenge.kdf)
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
        if token is not None and security.fingerprint(ca) != token.ca_fingerprint:
            raise errors.PeerAuthenticationFailed(
                "the cluster CA the control sent is not the one the join token names"
            )
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

    # ---------------------------------------------------------- follow --

    async def follow(self, after_seq: int | None, timeout: float = 0) -> AsyncIterator[EventRecord]:
        """This node's enrolment events from the control (from ``after_seq``,
        or from now), re-attaching after every break without repeating one,
        until the final event; gives up after ``timeout`` s without contact."""
        timeout = timeout or self._config.join_timeout
        cluster = self._store.cluster()
        if cluster is None or cluster.role is not Role.COMPUTE:
            raise errors.NotInitialised(
                "this node is not a member of a cluster: its join did not get as far as trust; "
                "run `microstackctl join` again"
            )
        where = validate.format_host_port(cluster.control_address, cluster.cluster_port)
        last, step = after_seq, BOOTSTRAP
        attempt, delay, lost_since = 0, 1.0, 0.0
        while True:
            client = peer.ControlClient(cluster, credentials.load(self._store))
            try:
                async for event in client.enrol(last):
                    attempt, delay, lost_since = 0, 1.0, 0.0
                    last, step = event.seq, event.step
                    if event.final:
                        state = "active" if event.state is StepState.DONE else "failed"
                        self._store.set_meta({ENROLMENT_META: state})
                        if state == "active":
                            self.start_heartbeats()
                    yield event
                    if event.final:
                        return
                raise errors.ControlUnreachable("the control ended the enrolment stream early")
            except errors.ControlUnreachable as exc:
                now = time.monotonic()
                lost_since = lost_since or now
                if now - lost_since > timeout:
                    raise errors.ControlUnreachable(
                        f"lost the control node at {where} for {timeout:.0f} s: {exc.message}; "
                        "the enrolment goes on there: follow it with `microstackctl watch`"
                    ) from exc
                attempt += 1
                yield self._local(
                    StepState.WAITING,
                    f"lost the control node at {where}; re-attaching (attempt {attempt}): "
                    f"{exc.message}",
                    step=step,  # shown under the step that was under way
                )
            finally:
                await client.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)

    # ------------------------------------------------------ heartbeats --

    def start_heartbeats(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._heartbeats())

    async def stop_heartbeats(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None

    def beat_now(self) -> None:
        """Send the next heartbeat at once: this node's services changed."""
        self._beat_now.set()

    async def _heartbeats(self) -> None:
        interval = 10
        while True:
            cluster = self._store.cluster()
            if cluster is None:
                return
            self._beat_now.clear()  # a change from here on is in this beat or the next
            client = peer.ControlClient(cluster, credentials.load(self._store))
            try:
                interval = await client.heartbeat(await self._services()) or interval
            except errors.PermissionDenied as exc:
                log.warning("heartbeat refused: this node was removed? reason=%r", exc.message)
                return
            except errors.MicrostackError as exc:
                log.info("heartbeat failed reason=%r", exc.message)
            finally:
                await client.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._beat_now.wait()

    def resume(self) -> None:
        """At start-up: an enrolled member goes on sending heartbeats."""
        cluster = self._store.cluster()
        if cluster is not None and cluster.role is Role.COMPUTE:
            if self._store.get_meta(ENROLMENT_META) == "active":
                self.start_heartbeats()

    # ----------------------------------------------------------- leave --

    async def forget(self) -> None:
        """Forget the cluster (this node was removed from it)."""
        await self.stop_heartbeats()
        for name in (NODE_KEY, NODE_CERT, CA_CERT):
            self._store.delete_file(name)
        self._store.forget_cluster()

    # ---------------------------------------------------------- status --

    async def status(self) -> tuple[pb.ClusterInfo, list[NodeRecord]]:
        """The cluster as the control sees it (this node's view is relayed)."""
        cluster = self._store.cluster()
        if cluster is None:
            raise errors.NotInitialised()
        client = peer.ControlClient(cluster, credentials.load(self._store))
        try:
            return await client.status()
        finally:
            await client.close()


def _utcnow() -> datetime:
    return datetime.now(UTC)
