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
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from microstackd import errors
from microstackd.config import DaemonConfig, Ports
from microstackd.enrolment.backoff import Backoff
from microstackd.enrolment.events import Signal
from microstackd.member import bootstrap
from microstackd.member.heartbeat import ENROLMENT_META, Heartbeats
from microstackd.model import ClusterRecord, EventRecord, NodeRecord, Role, StepState
from microstackd.peers.bootstrap import fetch_bootstrap_certificate
from microstackd.peers.cluster import ControlClient
from microstackd.store import Store
from microstackd.store.files import CA_CERT, NODE_CERT, NODE_KEY
from microstackd.trust import names, tokens, x509
from microstackd.trust.exchange import Hello

log = logging.getLogger(__name__)

BOOTSTRAP = "bootstrap"


@dataclass(frozen=True)
class _Credential:
    """What proves this joiner: the password, or a join token."""

    password: str = ""
    token: tokens.JoinToken | None = None

    def verifier(self) -> bootstrap.Verifier:
        if self.token is not None:
            return bootstrap.token_verifier(self.token)
        return bootstrap.password_verifier(self.password)


class Member:
    def __init__(
        self,
        config: DaemonConfig,
        store: Store,
        heartbeats: Heartbeats,
        ports: Ports,
        joined: Signal,
        left: Signal,
    ) -> None:
        self._config = config
        self._store = store
        self._heartbeats = heartbeats
        #: Where this node's agent listens (announced to the control in the hello).
        self._ports = ports
        #: Raised once this node holds its certificate (the wiring then serves
        #: the mTLS port).
        self._joined = joined
        #: Raised once this node was removed and forgot the cluster (the wiring
        #: then closes the mTLS port).
        self._left = left
        self._joining = False

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
        address = names.ip_address(address, "node address")
        if token_text:
            token = tokens.decode(token_text)
            if token.name != self._config.node_name:
                raise errors.InvalidArgument(
                    f"this join token is for a node named {token.name!r}, but this node is "
                    f"{self._config.node_name!r} (start microstackd with --node-name "
                    f"{token.name}, or make a token for {self._config.node_name})"
                )
            targets = [names.host_port(c, "control address in the token") for c in token.controls]
            credential = _Credential(token=token)
        else:
            targets = [names.host_port(control, "control address")]
            credential = _Credential(password=names.password(password))
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
        if self._expired():
            # Nothing accepts it any more: the control lets this name join
            # again (keeping its name and Nova host), as a removed node would.
            log.info("certificate expired; forgetting cluster=%s to join again", cluster.cluster_id)
            await self.leave()  # the mTLS port closes too: it presents the expired one
            return False
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

    def _expired(self) -> bool:
        """Whether this node's cluster certificate has expired."""
        cert_pem = self._store.read_file(NODE_CERT)
        if cert_pem is None:
            return False
        try:
            return x509.expired(x509.read_cert(cert_pem), datetime.now(UTC))
        except ValueError:
            return False

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
        backoff = Backoff()
        #: The certificate a busy control presented: pinned again for its turn.
        pinned: dict[tuple[str, int], bytes] = {}
        while True:
            host, port = targets[backoff.attempts % len(targets)]
            where = names.format_host_port(host, port)
            try:
                async for event in self._bootstrap(host, port, credential, address, pinned):
                    yield event
                return
            except errors.ControlBusy as exc:
                # Refused before any work, with a turn (control/bootstrap.py,
                # Admission): come back then, not sooner.
                if time.monotonic() + exc.retry_after > deadline:
                    raise errors.ControlBusy(
                        f"{exc.message} — gave up after waiting {timeout:.0f} s; "
                        "pass a longer --timeout",
                        exc.retry_after,
                    ) from exc
                yield self._local(
                    StepState.WAITING, f"waiting for the control node at {where}: {exc.message}"
                )
                await asyncio.sleep(exc.retry_after)
                continue
            except (errors.ControlUnreachable, errors.NotControl, errors.BootstrapBusy) as exc:
                pinned.clear()
                attempt = backoff.failed()
                if time.monotonic() + backoff.delay > deadline:
                    raise type(exc)(
                        f"{exc.message} — gave up after waiting {timeout:.0f} s "
                        f"({attempt} attempts); check the address and that the control is "
                        "initialised, or pass a longer --timeout"
                    ) from exc
                yield self._local(
                    StepState.WAITING,
                    f"waiting for the control node at {where} (attempt {attempt}): {exc.message}",
                )
            await backoff.wait()

    async def _bootstrap(
        self,
        host: str,
        port: int,
        credential: _Credential,
        address: str,
        pinned: dict[tuple[str, int], bytes],
    ) -> AsyncIterator[EventRecord]:
        where = names.format_host_port(host, port)
        name = self._config.node_name
        yield self._local(StepState.RUNNING, f"contacting the control node at {where}")
        cert_pem = pinned.get((host, port)) or await fetch_bootstrap_certificate(host, port)
        pinned[host, port] = cert_pem
        seen = x509.fingerprint(cert_pem)
        token = credential.token
        proof = "the join token" if token else "the cluster password"
        if token is None or seen == token.bootstrap_fingerprint:
            yield self._local(
                StepState.RUNNING,
                f"control presented certificate {seen[:16]}…; proving {proof}",
                20,
            )
        hello = Hello(node_name=name, address=address, hostname=self._config.hostname)
        try:
            trusted = await bootstrap.run(
                host,
                port,
                cert_pem,
                hello,
                credential.verifier(),
                cluster_port=self._ports.cluster,
                token=token,
                software=self._config.software,
            )
        except errors.WrongPassword as exc:
            if token is not None:  # the fingerprint was checked against the token's
                raise
            raise errors.WrongPassword(
                f"{exc.message}. This node was shown the bootstrap certificate {seen}; "
                "`microstackctl status` on the control node shows its own (line 'bootstrap'): "
                "if the two differ, something between the two machines is intercepting the "
                "connection"
            ) from exc
        creds = trusted.credentials
        self._store.write_secrets(
            {NODE_KEY: creds.key_pem, NODE_CERT: creds.cert_pem, CA_CERT: creds.ca_pem}
        )
        self._store.set_meta({ENROLMENT_META: "enrolling"})
        self._store.set_cluster(trusted.cluster)
        cluster = trusted.cluster
        log.info("bootstrap complete cluster=%s control=%s", cluster.cluster_id, where)
        await self._joined.emit()
        yield self._local(
            StepState.DONE,
            f"trusted: certificate issued by cluster {cluster.cluster_id} "
            f"(CA {cluster.ca_fingerprint[:16]}…)",
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
        where = names.format_host_port(cluster.control_address, cluster.cluster_port)
        last, step = after_seq, BOOTSTRAP
        backoff, lost_since = Backoff(), 0.0
        while True:
            client = ControlClient(cluster, self._store.credentials())
            try:
                async for event in client.enrol(last):
                    backoff.reset()
                    lost_since = 0.0
                    last, step = event.seq, event.step
                    if event.final:
                        state = "active" if event.state is StepState.DONE else "failed"
                        self._store.set_meta({ENROLMENT_META: state})
                        if state == "active":
                            self._heartbeats.start()
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
                attempt = backoff.failed()
                yield self._local(
                    StepState.WAITING,
                    f"lost the control node at {where}; re-attaching (attempt {attempt}): "
                    f"{exc.message}",
                    step=step,  # shown under the step that was under way
                )
            finally:
                await client.close()
            await backoff.wait()

    # ----------------------------------------------------------- leave --

    async def forget(self) -> None:
        """Forget the cluster (this node was removed from it)."""
        await self._heartbeats.stop()
        for name in (NODE_KEY, NODE_CERT, CA_CERT):
            self._store.delete_file(name)
        self._store.forget_cluster()

    async def leave(self) -> None:
        """The control removed this node: forget the cluster, and say so."""
        await self.forget()
        await self._left.emit()

    # ---------------------------------------------------------- status --

    async def status(self) -> tuple[ClusterRecord, list[NodeRecord]]:
        """The cluster as the control sees it (this node's view is relayed)."""
        cluster = self._store.cluster()
        if cluster is None:
            raise errors.NotInitialised()
        client = ControlClient(cluster, self._store.credentials())
        try:
            return await client.status()
        finally:
            await client.close()
