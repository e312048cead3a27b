"""The control's members once enrolled: remove one (stop its services,
revoke its certificate, delete its compute service in Nova), take its
heartbeats, and answer for the cluster's state."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any, NoReturn

from microstackd import errors
from microstackd.cloud import Progress
from microstackd.cloud.service import Cloud
from microstackd.control.cluster import Cluster
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
)
from microstackd.peers.cluster import AgentClient
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
        text += len(service.message)
    if text > MAX_SERVICES_TEXT:
        refuse(f"{text} characters of service messages (at most {MAX_SERVICES_TEXT})")
    return services


class Members:
    def __init__(self, cluster: Cluster, runner: Runner, cloud: Cloud) -> None:
        self._cluster = cluster
        self._store = cluster.store
        self._runner = runner
        self._cloud = cloud
        #: When each member was last heard from (heartbeats), and those times
        #: not yet written to the store.
        self._seen: dict[str, float] = {}
        self._unflushed: dict[str, float] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        #: name -> (stored record, last seen, unreachable, the record shown).
        self._shown: dict[str, tuple[NodeRecord, float, bool, NodeRecord]] = {}

    async def remove(self, name: str, force: bool) -> tuple[NodeRecord, str]:
        cluster = self._cluster.require()
        node = self._store.node(names.node_name(name, "node name"))
        if node is None:
            raise errors.NotFound(f"no node named {name!r} in the cluster")
        if node.role is Role.CONTROL or node.name == cluster.control_name:
            raise errors.InvalidArgument("the control node cannot be removed from its own cluster")
        if node.state is NodeState.REMOVED:
            return node, f"{name} was already removed"
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
        log.info("node removed node=%s serial=%s", node.name, node.cert_serial[:16])
        removed = self._store.node(node.name)
        assert removed is not None
        message = f"{name} removed: certificate {node.cert_serial[:16]} revoked; {told}"
        if self._cloud.configured() is not None:
            try:
                result = await self._cloud.run("remove", {"host": node.name}, timeout=90)
                message += f"; {result.get('message', 'Nova compute service deleted')}"
            except errors.CloudError as exc:
                log.warning("nova service delete failed node=%s error=%s", node.name, exc.message)
                message += f"; its Nova compute service could not be deleted: {exc.message}"
        return removed, message

    def beat(self, identity: Identity, services: list[ServiceRecord] | None) -> int:
        """A beat on a member's heartbeat stream (``services`` None: as on its
        last beat). The caller was checked when the stream opened; a beat
        refuses (``PermissionDenied``, which ends the stream) once its
        certificate is revoked, as removing the node does, or expired."""
        if identity.not_after.timestamp() < time.time():
            raise errors.PermissionDenied(f"the certificate of {identity.name} has expired")
        serial = format(identity.serial, "x")
        if self._store.is_revoked(serial):
            raise errors.PermissionDenied(
                f"certificate {serial[:16]} of {identity.name} is revoked"
            )
        return self.heartbeat(identity, services or [])

    def heartbeat(self, identity: Identity, services: list[ServiceRecord]) -> int:
        """A member's heartbeat. Its time is kept in memory (``status`` reads
        it from there) and written to the store with everyone else's at most
        every ``SEEN_FLUSH_SECONDS`` and at ``close``: 10,000 members beat
        1,000 times a second, and a durable commit each would be 1,000
        fsyncs a second. Its services are written at once, when they changed."""
        check_services(services, identity.name)
        now = time.time()
        self._seen[identity.name] = now
        self._unflushed[identity.name] = now
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                SEEN_FLUSH_SECONDS, self.flush
            )
        if services and self._store.services(identity.name) != sorted(
            services, key=lambda s: s.name
        ):
            self._store.set_services(identity.name, services)
        return self.heartbeat_interval

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
        stale = time.time() - self._cluster.config.unreachable_after
        return cluster, [self._as_seen(n, stale) for n in self._store.nodes()]

    def _as_seen(self, node: NodeRecord, stale: float) -> NodeRecord:
        """The node with its latest heartbeat, and ``unreachable`` when that is
        older than ``stale``. The record made is kept while nothing changes:
        at 10,000 nodes a new one each per status took ~0.2 s."""
        last_seen = max(node.last_seen, self._seen.get(node.name, 0.0))
        unreachable = (
            node.role is Role.COMPUTE and node.state is NodeState.ACTIVE and last_seen < stale
        )
        if not unreachable and last_seen == node.last_seen:
            return node
        kept = self._shown.get(node.name)
        if kept is not None and kept[0] is node and kept[1] == last_seen and kept[2] == unreachable:
            return kept[3]
        state = NodeState.UNREACHABLE if unreachable else node.state
        shown = dataclasses.replace(node, state=state, last_seen=last_seen)
        self._shown[node.name] = (node, last_seen, unreachable, shown)
        return shown

    async def nova_view(self) -> dict[str, dict[str, Any]]:
        """Nova's view per compute host for ``status`` ({} without a cloud)."""
        return await self._cloud.nova_view()

    async def launch(self, request: Mapping[str, str], progress: Progress) -> dict[str, Any]:
        """Boot a server on the cloud; its result."""
        self._cluster.require()
        if self._cloud.configured() is None:
            raise errors.CloudError("cannot launch: no cloud configured")
        if not request.get("image"):
            raise errors.InvalidArgument("an image name is needed")
        return await self._cloud.run("launch", dict(request), progress, timeout=900)
