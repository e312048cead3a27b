"""Rotating the cluster CA without downtime (``microstackctl ca rotate``).

1. **Begin**: a new CA (same cluster id). The old one becomes *retiring*
   (``tls/ca-retiring.*``); ``tls/ca.key`` is the new one's, and the trust
   bundle ``tls/ca.crt`` holds both, the new one first. The control's
   cluster port accepts members of either CA from its next handshake on,
   and keeps presenting its own certificate of the old CA (renewals of it
   too are signed by the old CA), so every member still trusts it. Each
   member's serial at this moment is recorded: it has *moved* once it holds
   another one (every certificate issued from now on is the new CA's).
2. **Move**, node by node: ``AgentService.TrustCA`` hands the member the
   bundle (it trusts both CAs from its next handshake) and has it renew at
   once: its new certificate is the new CA's, and its first call with it
   makes it the node's. A member that cannot be reached moves when it is
   back: its next heartbeat (it still holds a certificate of the old CA,
   which both ends still accept) starts its move.
3. **Retire**, once every member has moved: the control's own certificate
   is re-issued by the new CA, the bundle becomes the new CA alone, the old
   CA's key is deleted, the cluster record pins the new CA, and each member
   is sent the bundle of the new CA alone.

Each step is recorded before it is reported; a rotation interrupted (the
control restarted) goes on from where it was when ``ca rotate`` runs again
or a waiting member's heartbeat arrives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator

from microstackd import errors
from microstackd.control.certs import Certificates
from microstackd.control.cluster import Cluster, now
from microstackd.enrolment.events import Signal
from microstackd.model import EventRecord, NodeRecord, NodeState, Role, StepState
from microstackd.peers.cluster import AgentClient
from microstackd.store.files import (
    CA_CERT,
    CA_KEY,
    CA_RETIRING_CERT,
    CA_RETIRING_KEY,
    NODE_CERT,
    NODE_KEY,
)
from microstackd.trust import x509
from microstackd.trust.x509 import Identity

log = logging.getLogger(__name__)

#: meta key: the rotation under way, JSON {"old", "new", "started", "waiting": {node: [serials]}}.
ROTATION_META = "ca_rotation"
#: How long a member's move may take (its renewal and first call with it).
MOVE_TIMEOUT = 30.0


class Rotation:
    def __init__(self, cluster: Cluster, certificates: Certificates, renewed: Signal) -> None:
        self._cluster = cluster
        self._store = cluster.store
        self._certificates = certificates
        #: Raised when the control's own credentials (or trust) changed.
        self._renewed = renewed
        self._lock = asyncio.Lock()
        #: Members being moved now (by ``rotate`` or a catch-up).
        self._moving: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ state --

    def state(self) -> dict[str, object] | None:
        text = self._store.get_meta(ROTATION_META)
        if not text:
            return None
        data: dict[str, object] = json.loads(text)
        return data

    def _waiting(self) -> dict[str, list[str]]:
        """Members that have not moved yet, with the serials they held then."""
        state = self.state()
        if state is None:
            return {}
        waiting: dict[str, list[str]] = dict(state["waiting"])  # type: ignore[call-overload]
        left = {}
        for name, serials in waiting.items():
            node = self._store.node(name)
            if node is None or node.state is NodeState.REMOVED:
                continue
            if node.cert_serial in serials:
                left[name] = serials
        return left

    def _event(self, step: str, state: StepState, message: str, final: bool = False) -> EventRecord:
        return EventRecord(
            node=self._cluster.config.node_name, seq=0, step=step, state=state,
            message=message, percent=0, time=time.time(), final=final,
        )  # fmt: skip

    # ----------------------------------------------------------- rotate --

    async def rotate(self, cluster_id: str) -> AsyncIterator[EventRecord]:
        """Begin a rotation (or go on with the one under way) and stream it.
        ``cluster_id`` must be this control's: nothing rotates by accident."""
        cluster = self._cluster.require()
        if cluster_id != cluster.cluster_id:
            raise errors.InvalidArgument(
                f"cluster id {cluster_id[:40]!r} is not this control's ({cluster.cluster_id}): "
                "nothing was rotated"
            )
        if self._lock.locked():
            raise errors.AlreadyInitialised("a CA rotation is already running on this control")
        async with self._lock:
            state = self.state()
            if state is None:
                yield self._event("ca-rotate", StepState.RUNNING, "making a new cluster CA")
                old, new = await self._begin()
                yield self._event(
                    "ca-rotate",
                    StepState.DONE,
                    f"new CA {new[:16]}… trusted beside the old {old[:16]}…; moving every "
                    "member to it, one at a time",
                )
            else:
                yield self._event(
                    "ca-rotate",
                    StepState.DONE,
                    f"a rotation to CA {str(state['new'])[:16]}… is under way; going on with it",
                )
            for name in sorted(self._waiting()):
                node = self._store.node(name)
                if node is None or name in self._moving:
                    continue
                step = f"move {name}"
                yield self._event(step, StepState.RUNNING, "renewing under the new CA")
                try:
                    serial = await self._move(node)
                except errors.MicrostackError as exc:
                    yield self._event(
                        step, StepState.WAITING,
                        f"{exc.message}; it moves when it is back (its next heartbeat)",
                    )  # fmt: skip
                    continue
                yield self._event(
                    step, StepState.DONE, f"certificate {serial[:16]} of the new CA in use"
                )
            left = self._waiting()
            if left:
                yield self._event(
                    "retire",
                    StepState.WAITING,
                    f"the old CA stays trusted until {', '.join(sorted(left))} "
                    f"{'has' if len(left) == 1 else 'have'} moved (when back, at the next "
                    "heartbeat); `status` shows both CAs meanwhile",
                    final=True,
                )
                return
            message = await self._retire()
            yield self._event("retire", StepState.DONE, message, final=True)

    async def _begin(self) -> tuple[str, str]:
        cluster = self._cluster.require()
        old_key, bundle = self._store.read_file(CA_KEY), self._store.read_file(CA_CERT)
        if old_key is None or bundle is None:
            raise errors.StorageError(f"the cluster CA is missing from {self._store.state_dir}")
        old_cert = x509.load_bundle(bundle)[0]
        old_pem = x509.cert_to_pem(old_cert)
        new = x509.create_ca(cluster.cluster_id, now())
        waiting = {
            n.name: [s for s in (n.cert_serial, n.pending_serial) if s]
            for n in self._store.nodes()
            if n.role is Role.COMPUTE and n.state is not NodeState.REMOVED
        }
        old, fingerprint = x509.fingerprint(old_cert), x509.fingerprint(new.cert)
        # The old CA is kept first, so that no moment lacks it.
        self._store.write_secrets({CA_RETIRING_KEY: old_key, CA_RETIRING_CERT: old_pem})
        self._store.write_secrets({CA_KEY: new.key_pem(), CA_CERT: new.cert_pem() + old_pem})
        self._store.set_meta(
            {
                ROTATION_META: json.dumps(
                    {"old": old, "new": fingerprint, "started": time.time(), "waiting": waiting}
                )
            }
        )
        self._store.set_cluster(
            dataclasses.replace(
                cluster,
                ca_fingerprint=fingerprint,
                ca_not_after=new.cert.not_valid_after_utc.timestamp(),
            )
        )
        self._cluster.reload_secrets()
        await self._renewed.emit()  # the cluster port accepts both CAs now
        log.info(
            "CA rotation begun new=%s old=%s members=%d", fingerprint[:16], old[:16], len(waiting)
        )
        return old, fingerprint

    async def _move(self, node: NodeRecord) -> str:
        """Have ``node`` trust the bundle and renew under the new CA; its new serial."""
        serials = self._waiting().get(node.name)
        if serials is None:
            return node.cert_serial
        if not node.agent_port:
            raise errors.NodeUnreachable(f"{node.name} runs no agent")
        self._moving.add(node.name)
        try:
            bundle = self._certificates.trust_bundle()
            client = AgentClient(node, self._store.credentials())
            try:
                await client.trust_ca(bundle, renew=True)
            finally:
                await client.close()
            deadline = time.monotonic() + MOVE_TIMEOUT
            while True:  # its first call with the new certificate makes it the node's
                current = self._store.node(node.name)
                if current is None or current.cert_serial not in serials:
                    break
                if time.monotonic() > deadline:
                    raise errors.NodeUnreachable(
                        f"{node.name} renewed but made no call with its new certificate within "
                        f"{MOVE_TIMEOUT:.0f} s"
                    )
                await asyncio.sleep(0.2)
        finally:
            self._moving.discard(node.name)
        log.info("CA rotation: member moved node=%s serial=%s", node.name, current_serial(current))
        return current_serial(current)

    async def _retire(self) -> str:
        """Every member moved: the control moves too, and the old CA goes."""
        state = self.state()
        old = str(state["old"]) if state else ""
        bundle = self._store.read_file(CA_CERT)
        if bundle is None:
            raise errors.StorageError(f"{self._store.state_dir / CA_CERT} is missing")
        signing = x509.cert_to_pem(x509.load_bundle(bundle)[0])
        self._store.write_secret(CA_CERT, signing)
        self._store.delete_file(CA_RETIRING_KEY)
        self._store.delete_file(CA_RETIRING_CERT)
        self._cluster.reload_secrets()
        key = x509.generate_key()
        cert_pem, _ = self._certificates.renew_own(
            x509.make_csr(key, self._cluster.config.node_name)
        )
        self._store.write_secrets({NODE_KEY: x509.key_to_pem(key), NODE_CERT: cert_pem})
        self._store.set_meta({ROTATION_META: ""})
        await self._renewed.emit()  # presents its new certificate; trusts the new CA alone
        told, missed = 0, []
        for node in self._store.nodes():
            if node.role is not Role.COMPUTE or node.state is NodeState.REMOVED:
                continue
            client = AgentClient(node, self._store.credentials())
            try:
                await client.trust_ca(signing, renew=False)
                told += 1
            except errors.MicrostackError:
                missed.append(node.name)
            finally:
                await client.close()
        log.info("CA rotation done retired=%s members_told=%d missed=%s", old[:16], told, missed)
        message = f"old CA {old[:16]}… retired: its key is deleted; every node holds a "
        message += "certificate of the new CA"
        if missed:
            message += (
                f"; {', '.join(missed)} still also trust the old CA until their next renewal "
                "(nothing it signs is accepted by the control any more)"
            )
        return message

    # --------------------------------------------------------- catch-up --

    def noticed(self, identity: Identity) -> None:
        """A member called: if it has not moved yet, move it now (in the background)."""
        if identity.name in self._moving or self.state() is None:
            return
        if identity.name not in self._waiting():
            return
        node = self._store.node(identity.name)
        if node is None:
            return
        self._moving.add(identity.name)  # until the task takes over
        task = asyncio.get_running_loop().create_task(self._catch_up(node))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _catch_up(self, node: NodeRecord) -> None:
        self._moving.discard(node.name)
        try:
            await self._move(node)
        except errors.MicrostackError as exc:
            log.warning("CA rotation: %s did not move yet reason=%r", node.name, exc.message)
            return
        if self._waiting() or self._lock.locked():
            return
        async with self._lock:
            if self.state() is not None and not self._waiting():
                message = await self._retire()
                log.info("CA rotation finished by a member's return: %s", message)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass


def current_serial(node: NodeRecord | None) -> str:
    return node.cert_serial if node is not None else ""
