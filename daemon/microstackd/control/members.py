"""The control's members once enrolled: remove one (stop its services,
revoke its certificate, delete its compute service in Nova), take its
heartbeats, and answer for the cluster's state."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any, NoReturn

from microstackd import errors

# Note: what a launch's progress carries (the Launch servicer reads it).
from microstackd.cloud import Note as Note
from microstackd.cloud import Progress
from microstackd.cloud.launch import ACTIVE_TIMEOUT, SSH_TIMEOUT
from microstackd.cloud.service import Cloud
from microstackd.control.certs import expiry_warning, trusted_cas
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
from microstackd.store.files import CA_CERT
from microstackd.trust import names
from microstackd.trust.x509 import Identity

log = logging.getLogger(__name__)


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
    def __init__(self, cluster: Cluster, runner: Runner, cloud: Cloud) -> None:
        self._cluster = cluster
        self._store = cluster.store
        self._runner = runner
        self._cloud = cloud

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

    def heartbeat(self, identity: Identity, services: list[ServiceRecord]) -> int:
        check_services(services, identity.name)
        self._store.touch_node(identity.name, time.time())
        if services:
            self._store.set_services(identity.name, services)
        return self.heartbeat_interval

    @property
    def heartbeat_interval(self) -> int:
        return max(1, int(self._cluster.config.unreachable_after / 3))

    def status(self) -> tuple[ClusterRecord, list[NodeRecord]]:
        """The cluster and its nodes; an active member not heard from within
        ``unreachable_after`` is shown ``unreachable``."""
        cluster = self._cluster.require()
        at = time.time()
        stale = at - self._cluster.config.unreachable_after
        nodes = [
            dataclasses.replace(n, state=NodeState.UNREACHABLE)
            if n.role is Role.COMPUTE and n.state is NodeState.ACTIVE and n.last_seen < stale
            else n
            for n in self._store.nodes()
        ]
        renew_before = self._cluster.config.renew_before
        for i, n in enumerate(nodes):
            warning = expiry_warning(n, at, renew_before)
            if warning:
                unreachable = " (and it is unreachable)" if n.state is NodeState.UNREACHABLE else ""
                nodes[i] = dataclasses.replace(
                    n, state=NodeState.WARNING, message=warning + unreachable
                )
        bundle = self._store.read_file(CA_CERT)
        if bundle is not None:
            cluster = dataclasses.replace(cluster, cas=trusted_cas(bundle))
        return cluster, nodes

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
