"""The control's members once enrolled: remove one (refused while it hosts
instances unless forced; stop its services, revoke its certificate, take
away what the cloud holds for its host), take its heartbeats, and answer
for the cluster's state."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any, NoReturn

from microstackd import errors, versions

# Note: what a launch's progress carries (the Launch servicer reads it).
from microstackd.cloud import Note as Note
from microstackd.cloud import Progress, hosts
from microstackd.cloud.launch import ACTIVE_TIMEOUT, SSH_TIMEOUT
from microstackd.cloud.service import Cloud
from microstackd.control.certs import expiry_warning, trusted_cas
from microstackd.control.cluster import Cluster
from microstackd.control.node_accounts import NodeAccounts
from microstackd.enrolment.runner import Runner
from microstackd.model import (
    MAX_SERVICE_MESSAGE,
    MAX_SERVICE_NAME,
    MAX_SERVICES,
    MAX_SERVICES_TEXT,
    SERVICE_STATES,
    ClusterRecord,
    NodeRecord,
    NodeState,
    Role,
    ServiceRecord,
    Software,
)
from microstackd.peers.cluster import AgentClient
from microstackd.store.files import CA_CERT
from microstackd.trust import names
from microstackd.trust.x509 import Identity

log = logging.getLogger(__name__)

#: How often members' heartbeat times are written to the store (``Members.heartbeat``).
SEEN_FLUSH_SECONDS = 30.0


def check_services(services: list[ServiceRecord], node: str) -> list[ServiceRecord]:
    """``services`` as a member reported them, or ``errors.InvalidArgument``
    when they exceed what the control stores (model.MAX_SERVICES & co): one
    oversized report would otherwise make `status` fail everywhere."""

    def refuse(what: str) -> NoReturn:
        raise errors.InvalidArgument(f"{node} reported {what}: refused, nothing was stored")

    if len(services) > MAX_SERVICES:
        refuse(f"{len(services)} services (at most {MAX_SERVICES})")
    text = 0
    for service in services:
        if not 0 < len(service.name) <= MAX_SERVICE_NAME:
            refuse(f"a service name of {len(service.name)} characters")
        if service.state not in SERVICE_STATES:
            refuse(f"service {service.name} in state {service.state[:40]!r}")
        if len(service.message) > MAX_SERVICE_MESSAGE:
            refuse(f"a message of {len(service.message)} characters for {service.name}")
        if len(service.detail) > MAX_SERVICE_MESSAGE:
            refuse(f"a detail of {len(service.detail)} characters for {service.name}")
        text += len(service.message) + len(service.detail)
    if text > MAX_SERVICES_TEXT:
        refuse(f"{text} characters of service messages (at most {MAX_SERVICES_TEXT})")
    return services


class Members:
    def __init__(
        self, cluster: Cluster, runner: Runner, cloud: Cloud, accounts: NodeAccounts
    ) -> None:
        self._cluster = cluster
        self._store = cluster.store
        self._runner = runner
        self._cloud = cloud
        self._accounts = accounts
        #: When each member was last heard from (heartbeats), and those times
        #: not yet written to the store.
        self._seen: dict[str, float] = {}
        self._unflushed: dict[str, float] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        #: name -> (stored record, last seen, unreachable, expiry warning, the
        #: record shown, the version refused).
        self._shown: dict[str, tuple[NodeRecord, float, bool, str, NodeRecord, str]] = {}
        #: name -> its open heartbeat streams (their tasks) and the serial each
        #: was opened with.
        self._streams: dict[str, dict[asyncio.Task[Any], str]] = {}
        #: Streams ended by the control (``_end``), and the error their caller is told.
        self._ended: dict[asyncio.Task[Any], errors.MicrostackError] = {}

    async def remove(self, name: str, force: bool) -> tuple[NodeRecord, str]:
        """Take a compute out of the cluster and out of the cloud. One that
        still hosts instances is refused unless ``force`` (what is left
        behind is said). Removing a removed node again retries the cloud's
        cleanup (after its instances were evacuated or deleted, say)."""
        cluster = self._cluster.require()
        node = self._store.node(names.node_name(name, "node name"))
        if node is None:
            raise errors.NotFound(f"no node named {name!r} in the cluster")
        if node.role is Role.CONTROL or node.name == cluster.control_name:
            raise errors.InvalidArgument("the control node cannot be removed from its own cluster")
        if node.state is NodeState.REMOVED:
            message = f"{name} was already removed; {await self._revoke_accounts(node.name)}"
            if self._cloud.configured() is None:
                return node, message
            return node, f"{message}; {await self._cloud_cleanup(node.name)}"
        left = await self._instances(node.name, force)
        if left and not force:
            raise errors.NodeNotEmpty(
                f"{name} still hosts {len(left)} instance(s): {hosts.describe(left)}. Move them "
                f"to another compute first, or remove {name} anyway with --force (they stay in "
                f"Nova on a host that is gone, and its compute service is kept, disabled and "
                f"forced down, until they are evacuated or deleted)"
            )
        self._runner.cancel(node.name)
        told = "it runs no agent"
        if node.agent_port:
            client = AgentClient(node, self._store.credentials())
            try:
                stopped = await client.leave()
                told = f"its services were stopped ({len(stopped)}) and it forgot the cluster"
            except errors.NodeUnreachable as exc:
                if not force:
                    raise errors.NodeUnreachable(
                        f"{exc.message}. Its services could not be stopped; remove it anyway "
                        "with --force (they keep running until the node is back)"
                    ) from exc
                told = f"it could not be reached ({exc.message}); removed by force"
            finally:
                await client.close()
        self._store.remove_node(node.name, node.cert_serial, time.time())
        for memory in (self._seen, self._unflushed, self._shown):
            memory.pop(node.name, None)
        for stream, serial in self._streams.pop(node.name, {}).items():
            # Its certificate is revoked: its heartbeats end now, not at the next.
            self._end(
                stream,
                errors.PermissionDenied(f"certificate {serial[:16]} of {node.name} is revoked"),
            )
        log.info("node removed node=%s serial=%s", node.name, node.cert_serial[:16])
        removed = self._store.node(node.name)
        assert removed is not None
        message = f"{name} removed: certificate {node.cert_serial[:16]} revoked; {told}"
        # Its OpenStack secrets stop working before anything slower is done.
        message += f"; {await self._revoke_accounts(node.name)}"
        if left:
            message += (
                f"; left behind: {len(left)} instance(s) Nova still places on {name}: "
                f"{hosts.describe(left)} (evacuate or delete them, then `microstackctl remove "
                f"{name}` again deletes its compute service)"
            )
        message += f"; {await self._push_revocations(node.name)}"
        if self._cloud.configured() is not None:
            message += f"; {await self._cloud_cleanup(node.name)}"
        return removed, message

    async def _revoke_accounts(self, name: str) -> str:
        """Delete the node's own RabbitMQ and Keystone users; what was done,
        or what is left and how to finish (a failure is not fatal: the node
        is out of the cluster already)."""
        try:
            return f"its own OpenStack accounts: {await self._accounts.revoke(name)}"
        except errors.MicrostackError as exc:
            log.warning("node accounts not deleted node=%s error=%s", name, exc.message)
            return (
                f"its own OpenStack accounts could not all be deleted: {exc.message}; they "
                f"still work until `microstackctl remove {name}` is run again and succeeds"
            )

    async def _push_revocations(self, removed: str) -> str:
        """Every other compute's libvirtd and QEMU refuse the removed node's
        certificate from now on (the migration transport trusts the CA)."""
        crl = self._cluster.revocation_list()
        others = [
            n
            for n in self._store.nodes()
            if n.role is Role.COMPUTE and n.state is NodeState.ACTIVE and n.agent_port
        ]
        if not others:
            return "no other compute to tell about its certificate"
        missed = []
        for node in others:
            client = AgentClient(node, self._store.credentials())
            try:
                await client.update_revocations(crl, timeout=10)
            except errors.MicrostackError as exc:
                log.warning("revocations not pushed node=%s error=%s", node.name, exc.message)
                missed.append(f"{node.name} ({exc.message})")
            finally:
                await client.close()
        told = f"{len(others) - len(missed)} other compute(s) refuse its certificate from now on"
        if missed:
            told += (
                f"; not told: {', '.join(missed)} (until their next enrolment their libvirtd "
                f"still accepts {removed}'s certificate)"
            )
        return told

    async def _instances(self, host: str, force: bool) -> list[dict[str, str]]:
        """The servers Nova places on ``host`` ([] without a cloud). When Nova
        cannot be asked, only ``force`` goes on (without knowing)."""
        if self._cloud.configured() is None:
            return []
        try:
            result = await self._cloud.run("instances", {"host": host}, timeout=60)
        except errors.CloudError as exc:
            if force:
                log.warning("cannot list instances node=%s error=%s", host, exc.message)
                return []
            raise errors.CloudError(
                f"cannot tell whether {host} still hosts instances: {exc.message}; remove it "
                "anyway with --force"
            ) from exc
        return list(result["instances"])

    async def _cloud_cleanup(self, host: str) -> str:
        """Take away what the cloud holds for ``host``; what was done, or why not."""
        try:
            result = await self._cloud.run("remove", {"host": host}, timeout=120)
        except errors.CloudError as exc:
            log.warning("cloud cleanup failed node=%s error=%s", host, exc.message)
            return (
                f"what the cloud holds for it could not all be deleted: {exc.message} "
                f"(`microstackctl remove {host}` again retries)"
            )
        return str(result["message"])

    async def drain(
        self, name: str, instance_timeout: float, progress: Progress
    ) -> list[dict[str, str]]:
        """Disable a compute's nova-compute and move its instances away; the
        instances moved. A compute whose agent answers is up (live moves);
        one that does not is down (evacuation)."""
        node = self._compute(name)
        if self._cloud.configured() is None:
            raise errors.CloudError(f"cannot drain {name}: no cloud configured")
        down = False
        if node.state is NodeState.REMOVED:
            down = True  # its services were stopped: what Nova still places there is evacuated
        elif node.agent_port:
            client = AgentClient(node, self._store.credentials())
            try:
                await client.services(timeout=10)
            except errors.NodeUnreachable as exc:
                await progress(Note(f"{name} cannot be reached ({exc.message}): taken as down"))
                down = True
            finally:
                await client.close()
        request = {"host": node.name, "instance_timeout": instance_timeout, "host_down": down}
        # Each move has its own deadline (aborted past it): this one only bounds a hang.
        timeout = 120 + instance_timeout * (1 + len(await self._instances(node.name, False)))
        result = await self._cloud.run("drain", request, progress, timeout=timeout)
        return list(result["moved"])

    async def undrain(self, name: str) -> str:
        node = self._compute(name)
        if node.state is NodeState.REMOVED:
            raise errors.InvalidArgument(f"{name} was removed: join it again instead")
        if self._cloud.configured() is None:
            raise errors.CloudError(f"cannot undrain {name}: no cloud configured")
        result = await self._cloud.run("undrain", {"host": node.name}, timeout=60)
        return str(result["message"])

    def _compute(self, name: str) -> NodeRecord:
        cluster = self._cluster.require()
        node = self._store.node(names.node_name(name, "node name"))
        if node is None:
            raise errors.NotFound(f"no node named {name!r} in the cluster")
        if node.role is Role.CONTROL or node.name == cluster.control_name:
            raise errors.InvalidArgument(f"{name} is the control node: it runs no instances")
        return node

    def open_stream(self, identity: Identity) -> None:
        """A heartbeat stream of ``identity`` opened in the current task (its
        certificate was just authorised). Another stream of the same node
        under a certificate revoked since (it renewed, and this stream is its
        first call with the new one) is ended at once, not at its next beat;
        ``remove`` ends all of them (``ended_by`` says why)."""
        serial = format(identity.serial, "x")
        task = asyncio.current_task()
        assert task is not None
        streams = self._streams.setdefault(identity.name, {})
        for other, other_serial in list(streams.items()):
            if other_serial != serial and self._store.is_revoked(other_serial):
                self._end(
                    other,
                    errors.PermissionDenied(
                        f"certificate {other_serial[:16]} of {identity.name} is revoked"
                    ),
                )
        streams[task] = serial

    def _end(self, task: asyncio.Task[Any], error: errors.MicrostackError) -> None:
        self._ended[task] = error
        task.cancel()

    async def end_streams(self, wait: float = 2.0) -> None:
        """The control is stopping: every heartbeat stream ends now, told
        UNAVAILABLE (its member reconnects when the control is back), rather
        than holding the server's stop for its whole grace period. Waits (at
        most ``wait`` s) for the streams to have ended, so that their status
        is on its way before the server stops."""
        tasks = [task for streams in self._streams.values() for task in streams]
        for task in tasks:
            self._end(task, errors.ShuttingDown("the control is stopping: reconnect later"))
        if tasks:
            await asyncio.wait(tasks, timeout=wait)

    def ended_by(self) -> errors.MicrostackError | None:
        """The error the current task's stream was ended with (``_end``), or
        None: its cancellation came from elsewhere (the call was cancelled)."""
        task = asyncio.current_task()
        return None if task is None else self._ended.pop(task, None)

    def close_stream(self, identity: Identity) -> None:
        """The heartbeat stream ``open_stream`` recorded is over."""
        task = asyncio.current_task()
        self._ended.pop(task, None)  # type: ignore[arg-type]
        streams = self._streams.get(identity.name)
        if streams is not None:
            streams.pop(task, None)  # type: ignore[arg-type]
            if not streams:
                del self._streams[identity.name]

    def beat(
        self,
        identity: Identity,
        services: list[ServiceRecord] | None,
        software: Software | None = None,
    ) -> int:
        """A beat on a member's heartbeat stream; ``services`` and ``software``
        None: the beat is the same as the last one on this stream (so it was
        taken: its services and its version are not looked at again). The
        caller was checked when the stream opened; a beat refuses
        (``PermissionDenied``, which ends the stream) once its certificate is
        revoked (the node was removed, or it uses its renewed certificate
        now) or expired, and (``VersionSkew``) as ``heartbeat`` does."""
        if identity.not_after.timestamp() < time.time():
            raise errors.PermissionDenied(f"the certificate of {identity.name} has expired")
        serial = format(identity.serial, "x")
        if self._store.is_revoked(serial):
            raise errors.PermissionDenied(
                f"certificate {serial[:16]} of {identity.name} is revoked"
            )
        if services is None or software is None:
            self._saw(identity.name)
            return self.heartbeat_interval
        return self.heartbeat(identity, services, software)

    def heartbeat(
        self, identity: Identity, services: list[ServiceRecord], software: Software
    ) -> int:
        """Take a member's sign of life; ``errors.VersionSkew`` when the version
        it declares is outside the window (recorded, so ``status`` shows it,
        but the member is not seen: it turns unreachable).

        Its time is kept in memory (``status`` reads it from there) and
        written to the store with everyone else's at most every
        ``SEEN_FLUSH_SECONDS`` and at ``close``: 10,000 members beat 1,000
        times a second, and a durable commit each would be 1,000 fsyncs a
        second. Its services are written at once, when they changed."""
        check_services(services, identity.name)
        known = self._store.node(identity.name)
        if known is None or (known.version, known.api_version) != (software.version, software.api):
            self._store.set_software(identity.name, software)
        versions.check_member(identity.name, software, self._cluster.config.version)
        self._saw(identity.name)
        if services and (
            known is None or list(known.services) != sorted(services, key=lambda s: s.name)
        ):
            self._store.set_services(identity.name, services)
        return self.heartbeat_interval

    def alive(self, identity: Identity) -> None:
        """A heartbeat datagram of ``identity`` was taken (``control.beats``:
        its key, its counter and its certificate were checked there)."""
        self._saw(identity.name)

    def _saw(self, name: str) -> None:
        now = time.time()
        self._seen[name] = now
        self._unflushed[name] = now
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                SEEN_FLUSH_SECONDS, self.flush
            )

    def flush(self) -> None:
        """Write the heartbeat times not yet in the store, in one commit."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        seen, self._unflushed = self._unflushed, {}
        if seen:
            try:
                self._store.touch_nodes(seen)
            except errors.MicrostackError as exc:  # kept in memory, tried again next time
                log.warning("cannot record heartbeats error=%s", exc.message)
                self._unflushed = {**seen, **self._unflushed}

    @property
    def heartbeat_interval(self) -> int:
        return max(1, int(self._cluster.config.unreachable_after / 3))

    def status(self) -> tuple[ClusterRecord, list[NodeRecord]]:
        """The cluster and its nodes; an active member not heard from within
        ``unreachable_after`` is shown ``unreachable``."""
        cluster = self._cluster.require()
        at = time.time()
        stale = at - self._cluster.config.unreachable_after
        renew_before = self._cluster.config.renew_before
        nodes = [self._as_seen(n, stale, at, renew_before) for n in self._store.nodes()]
        bundle = self._store.read_file(CA_CERT)
        if bundle is not None:
            cluster = dataclasses.replace(cluster, cas=trusted_cas(bundle))
        return cluster, nodes

    def _as_seen(
        self, node: NodeRecord, stale: float, at: float, renew_before: float
    ) -> NodeRecord:
        """The node as ``status`` shows it: its latest heartbeat, ``unreachable``
        when that is older than ``stale``, ``warning`` when its certificate is
        close to expiry and was not renewed, the version refused, the
        control's own version. The record made is kept while nothing
        changes: at 10,000 nodes a new one each per status took ~0.2 s."""
        last_seen = max(node.last_seen, self._seen.get(node.name, 0.0))
        unreachable = (
            node.role is Role.COMPUTE and node.state is NodeState.ACTIVE and last_seen < stale
        )
        warning = expiry_warning(node, at, renew_before)
        kept = self._shown.get(node.name)
        if kept is not None and kept[0] is node:
            if kept[1:4] == (last_seen, unreachable, warning):
                return kept[4]
            refused = kept[5]
        elif node.role is Role.CONTROL or node.state is NodeState.REMOVED:
            refused = ""
        else:
            refused = self._refusal(node)
        changes: dict[str, Any] = {}
        if node.role is Role.CONTROL:
            own = self._cluster.config.software
            changes.update(version=own.version, api_version=own.api)
        if last_seen != node.last_seen:
            changes["last_seen"] = last_seen
        if unreachable:
            changes["state"] = NodeState.UNREACHABLE
        if refused:
            changes["version_refused"] = refused
        if warning:
            also = " (and it is unreachable)" if unreachable else ""
            changes.update(state=NodeState.WARNING, message=warning + also)
        shown = dataclasses.replace(node, **changes) if changes else node
        self._shown[node.name] = (node, last_seen, unreachable, warning, shown, refused)
        return shown

    def _refusal(self, node: NodeRecord) -> str:
        """Why the window refuses the version ``node`` last declared ("": it does not)."""
        if not node.version and not node.api_version:
            return ""  # nothing declared yet (a bare API client, the benchmarks' nodes)
        software = Software(node.version, node.api_version)
        try:
            versions.check_member(node.name, software, self._cluster.config.version)
        except errors.VersionSkew as exc:
            return exc.message
        return ""

    async def nova_view(self) -> dict[str, dict[str, Any]]:
        """Nova's view per compute host for ``status`` ({} without a cloud)."""
        return await self._cloud.nova_view()

    async def launch(self, request: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
        """Boot a server on the cloud; its result."""
        self._cluster.require()
        if self._cloud.configured() is None:
            raise errors.CloudError("cannot launch: no cloud configured")
        if not request.get("image"):
            raise errors.InvalidArgument("an image name is needed")
        # Its waits (ACTIVE, then sshd), and the calls around them.
        limit = ACTIVE_TIMEOUT + float(request.get("ssh_timeout") or SSH_TIMEOUT) + 300
        return await self._cloud.run("launch", dict(request), progress, timeout=limit)
