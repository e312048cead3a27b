"""A compute's enrolment, run by the control on the step engine: the plan's
step actions (admit, issue-config, configure-node through the node's agent,
admit-to-cloud through openstacksdk, done), and resuming every enrolment
that was under way when the daemon stopped."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

from microstackd import cloud, errors
from microstackd.cloud.service import ADMIT_TIMEOUT, Cloud
from microstackd.control import config as control_config
from microstackd.control.cluster import Cluster
from microstackd.control.members import check_services
from microstackd.control.node_accounts import NodeAccounts
from microstackd.control.tunnels import ControlTunnels
from microstackd.enrolment import machine as enrolment
from microstackd.enrolment.backoff import Backoff
from microstackd.enrolment.runner import Runner, Skipped, StepAction, StepContext
from microstackd.model import NodeRecord, NodeState, Role, ServiceRecord, StepState, clip
from microstackd.node import watch
from microstackd.peers.cluster import AgentClient
from microstackd.trust.x509 import Identity

log = logging.getLogger(__name__)


class Enrolments:
    def __init__(
        self,
        cluster: Cluster,
        runner: Runner,
        cloud: Cloud,
        accounts: NodeAccounts,
        tunnels: ControlTunnels,
    ) -> None:
        self._cluster = cluster
        self._store = cluster.store
        self._runner = runner
        self._cloud = cloud
        self._accounts = accounts
        #: The control's own end of each compute's network path (tunnels.py).
        self._tunnels = tunnels

    def resume(self) -> None:
        """After a restart: carry on every enrolment that was under way."""
        if self._store.cluster() is None:
            return
        for node in self._store.nodes():
            if node.role is Role.COMPUTE and node.state is NodeState.ENROLLING:
                log.info("resuming enrolment node=%s", node.name)
                self._runner.ensure_running(node.name, enrolment.COMPUTE_PLAN, self._actions())

    def enrol(self, identity: Identity, after_seq: int | None = None) -> int:
        """Start or resume the caller's enrolment; return the seq to follow from.

        ``after_seq`` None is a join (it resumes a failed enrolment); a number
        is a re-attach to the stream. An enrolment that ended is never run
        again by a re-attach, nor a finished one by anyone: its events are
        replayed up to its final one, which ends the follower's stream, and
        no other final event is appended."""
        node = self._store.node(identity.name)
        assert node is not None  # the authoriser admitted only known nodes
        after = self._store.last_seq(node.name) if after_seq is None else after_seq
        final = self._store.final_event(node.name)
        if final is not None and (final.state is StepState.DONE or after_seq is not None):
            return min(after, final.seq - 1)
        self._runner.ensure_running(node.name, enrolment.COMPUTE_PLAN, self._actions())
        return after

    def _actions(self) -> Mapping[str, StepAction]:
        return {
            enrolment.ADMIT: self._admit,
            enrolment.ISSUE_CONFIG: self._issue_config,
            enrolment.CONFIGURE_NODE: self._configure_node,
            enrolment.ADMIT_TO_CLOUD: self._admit_to_cloud,
            enrolment.DONE: self._done,
        }

    def _node(self, name: str) -> NodeRecord:
        node = self._store.node(name)
        if node is None or node.state is NodeState.REMOVED:
            raise errors.NotFound(f"node {name} is no longer in the cluster")
        return node

    async def _admit(self, ctx: StepContext) -> str:
        node = self._store.node(ctx.node)
        if node is None:
            raise errors.NotFound(f"node {ctx.node} is no longer in the cluster")
        ctx.update_node(NodeState.ENROLLING)
        return (
            f"{node.name} admitted: compute node at {node.address}, "
            f"certificate serial {node.cert_serial[:16]}"
        )

    async def _issue_config(self, ctx: StepContext) -> str:
        node = self._node(ctx.node)
        config = self._cluster.load_control_config()
        shared = self._accounts.unavailable()
        if shared is None:
            await ctx.progress(f"giving {node.name} its own RabbitMQ and Keystone users")
            try:
                accounts, made = await self._accounts.issue(node.name)
            except errors.CloudError as exc:
                raise errors.CloudError(
                    f"{exc.message}. Once it answers, run `microstackctl join` on {node.name} "
                    "again: the enrolment resumes at this step"
                ) from None
            own: control_config.OwnCredentials | None = accounts.own()
            credentials = f"its own credentials ({made})"
        else:
            own, credentials = None, f"control.yaml's shared credentials: {shared}"
        settings = control_config.issue_compute_settings(
            config, node, revocation_list=self._cluster.revocation_list().decode(), own=own
        )
        return (
            f"{len(settings)} settings for {node.name}: {config.public_summary(own)}; {credentials}"
        )

    async def _configure_node(self, ctx: StepContext) -> str | Skipped:
        node = self._node(ctx.node)
        if not node.agent_port:
            # A joiner that announced no agent port (a bare API client, the
            # benchmarks' simulated nodes) has no services to configure.
            return Skipped(f"{node.name} runs no agent: no services to configure")
        config = self._cluster.load_control_config()
        # The CRL is public: what the compute's libvirtd and QEMU refuse (removed nodes).
        accounts = self._accounts.current(node.name)
        settings = control_config.issue_compute_settings(
            config,
            node,
            revocation_list=self._cluster.revocation_list().decode(),
            own=None if accounts is None else accounts.own(),
        )
        backoff = Backoff()
        while True:
            client = AgentClient(node, self._store.credentials())
            try:
                return await self._apply_compute_role(ctx, client, node, settings)
            except errors.NodeUnreachable as exc:
                # The node's daemon is down or cut off: wait for it, however long.
                attempt = backoff.failed()
                await ctx.progress(
                    f"waiting for the agent of {node.name} (attempt {attempt}): {exc.message}",
                    waiting=True,
                )
            finally:
                await client.close()
            await backoff.wait()

    async def _apply_compute_role(
        self, ctx: StepContext, client: AgentClient, node: NodeRecord, settings: dict[str, str]
    ) -> str:
        try:
            async for step in client.apply_role(Role.COMPUTE.value, settings):
                if step.final:
                    services = check_services(list(step.services), node.name)
                    self._store.set_services(node.name, services)
                    return clip(step.message)
                await ctx.progress(f"{clip(step.step, 100)}: {clip(step.message)}", step.percent)
        except errors.NodeUnreachable:
            raise
        except errors.MicrostackError:
            with contextlib.suppress(errors.MicrostackError):
                services = check_services(await client.services(), node.name)
                self._store.set_services(node.name, services)
            raise
        raise errors.NodeUnreachable(f"the agent of {node.name} ended its stream without a result")

    async def _admit_to_cloud(self, ctx: StepContext) -> str | Skipped:
        node = self._node(ctx.node)
        if self._cloud.configured() is None:
            return Skipped(cloud.NO_CLOUD)
        if not node.agent_port:
            return Skipped(f"{node.name} runs no agent: no nova-compute to admit")
        config = self._cluster.load_control_config()
        daemon = self._cluster.config
        tunnels = self._tunnels if self._tunnels.available() else None
        request = {
            "host": node.name,
            "timeout": ADMIT_TIMEOUT,
            "nova_manage": cloud.nova_manage_argv(daemon.openstack_prefix, daemon.config_root),
            "discover_interval": config.discover_hosts_interval,
            # The control is the network node: its tunnel to the host is checked below.
            "network_agent": tunnels is not None,
        }

        async def progress(note: cloud.Note) -> None:
            await ctx.progress(note.message, waiting=note.state is StepState.WAITING)

        # A service of the node that fails meanwhile (nova-compute without its
        # virt driver) ends the wait at once, with its own last log lines.
        admit = self._cloud.run("admit", request, progress, timeout=5 * ADMIT_TIMEOUT)
        result = await watch.unless_a_service_fails(
            admit, self._agent_services(node), node.name, "it was being admitted to Nova"
        )
        message = (
            f"{node.name} admitted to Nova: {result.get('service')}; "
            f"{result.get('mapping')}; {result.get('hypervisor')}; {result.get('provider')}"
        )
        if tunnels is not None and result.get("tunnel"):
            path = await tunnels.ensure(node.name, str(result["tunnel"]), ctx.progress)
            message += f"; {path}"
        return message

    def _agent_services(self, node: NodeRecord) -> watch.Statuses:
        """Ask the node's agent for its services (and keep them for ``status``)."""

        async def statuses() -> list[ServiceRecord]:
            client = AgentClient(node, self._store.credentials())
            try:
                services = await client.services()
            finally:
                await client.close()
            self._store.set_services(node.name, services)
            return services

        return statuses

    async def _done(self, ctx: StepContext) -> str:
        ctx.update_node(seen=True)  # heartbeats take over from here
        cluster = self._cluster.require()
        return f"{ctx.node} is an active compute node of cluster {cluster.cluster_id}"
