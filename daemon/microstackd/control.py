"""The control node's side of the cluster: create it, admit nodes through
the password bootstrap, run their enrolment, answer for its state.

No gRPC here: the servicers in ``rpc/`` translate requests into these calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from microstackd import (
    cloud,
    control_config,
    credentials,
    enrolment,
    errors,
    security,
    servicewatch,
    tokens,
    validate,
)
from microstackd.config import DaemonConfig
from microstackd.credentials import CA_CERT, CA_KEY, NODE_CERT, NODE_KEY
from microstackd.model import (
    Access,
    ClusterRecord,
    NodeRecord,
    NodeState,
    Role,
    ServiceRecord,
    TokenRecord,
)
from microstackd.node.steps import helpers_dir
from microstackd.plane import ControlPlane
from microstackd.ratelimit import FailureLimiter
from microstackd.rpc import peer
from microstackd.runner import Runner, Skipped, StepAction, StepContext
from microstackd.store import Store

log = logging.getLogger(__name__)

VERIFIER = "verifier.json"
#: Longest wait between two attempts to reach a node's agent, seconds.
MAX_RETRY_DELAY = 10.0
#: How long admit-to-cloud waits for each of Nova's states, seconds.
ADMIT_TIMEOUT = 300.0
#: How old Nova's view in ``status`` may be, seconds.
NOVA_VIEW_MAX_AGE = 5.0


@dataclass(frozen=True)
class BootstrapResult:
    certificate_pem: bytes
    ca_certificate_pem: bytes
    control_name: str
    cluster_port: int
    confirmation: bytes


class BootstrapSession:
    """One joiner's bootstrap in progress on the control."""

    def __init__(
        self,
        hello: security.Hello,
        exchange: security.ControlExchange,
        source: str,
        agent_port: int,
        token_id: str = "",
    ) -> None:
        self.hello = hello
        self.exchange = exchange
        self.source = source
        self.agent_port = agent_port
        self.token_id = token_id


def _now() -> datetime:
    return datetime.now(UTC)


class Control:
    def __init__(
        self,
        config: DaemonConfig,
        store: Store,
        runner: Runner,
        bootstrap_fingerprint: str,
        on_member: Callable[[], Awaitable[None]],
        plane: ControlPlane | None = None,
    ) -> None:
        self._config = config
        #: The control role (the OpenStack control plane), run as init's middle steps.
        self._plane = plane
        self._store = store
        self._runner = runner
        self._bootstrap_fingerprint = bootstrap_fingerprint
        self._on_member = on_member
        self._limiter = FailureLimiter(config.bootstrap_backoff, config.bootstrap_backoff_max)
        self._control_config_cache: tuple[int, control_config.ControlConfig] | None = None
        self._ca: security.CertificateAuthority | None = None
        self._verifier: tuple[bytes, security.KdfParams] | None = None
        self._nova_view: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})
        self._nova_lock = asyncio.Lock()

    # ------------------------------------------------------------ init --

    def init(self, password: str, address: str) -> int:
        """Start (or resume) creating the cluster; return the seq to follow from."""
        password = validate.password(password)
        address = validate.ip_address(address, "control address")
        name = self._config.node_name
        cluster = self._store.cluster()
        if cluster is not None:
            me = self._store.node(name)
            if cluster.role is not Role.CONTROL:
                raise errors.AlreadyInitialised(
                    f"this node is already a compute node of cluster {cluster.cluster_id} "
                    f"(control {cluster.control_name} at {cluster.control_address})"
                )
            if me is not None and me.state is NodeState.ACTIVE:
                raise errors.AlreadyInitialised(
                    f"this node is already the control node of cluster {cluster.cluster_id}; "
                    "nothing was changed"
                )
        if self._runner.running(name):
            raise errors.AlreadyInitialised("an init is already running on this node")
        after = self._store.last_seq(name)
        actions: dict[str, StepAction] = {
            enrolment.CREATE_CLUSTER: lambda ctx: self._create_cluster(ctx, password, address),
            enrolment.DONE: self._control_done,
        }
        plan, titles = enrolment.CONTROL_PLAN, None
        if self._plane is not None:
            plan = (plan[0], *self._plane.plan(), *plan[1:])
            actions.update(self._plane.actions(self.load_control_config))
            titles = self._plane.titles()
        self._runner.ensure_running(name, plan, actions, titles)
        return after

    async def _create_cluster(self, ctx: StepContext, password: str, address: str) -> str:
        now = _now()
        cluster_id = secrets.token_hex(8)
        kdf = security.new_kdf_params()
        await ctx.progress("deriving the password verifier (scrypt)", 10)
        verifier = await asyncio.to_thread(security.derive_verifier, password, kdf)
        ca = security.create_ca(cluster_id, now)
        key = security.generate_key()
        cert = security.issue_certificate(
            ca,
            key.public_key(),
            node_name=self._config.node_name,
            role=Role.CONTROL.value,
            address=address,
            hostname=self._config.hostname,
            now=now,
        )
        await ctx.progress("writing the cluster CA and this node's certificate", 60)
        control_config.ensure(self._config.control_config_path, address)
        store = self._store
        store.write_secret(CA_KEY, security.key_to_pem(ca.key))
        store.write_secret(CA_CERT, security.cert_to_pem(ca.cert))
        store.write_secret(NODE_KEY, security.key_to_pem(key))
        store.write_secret(NODE_CERT, security.cert_to_pem(cert))
        store.write_secret(VERIFIER, _verifier_json(verifier, kdf))
        identity = security.identity_of(cert)
        store.put_node(
            NodeRecord(
                name=self._config.node_name,
                role=Role.CONTROL,
                address=address,
                hostname=self._config.hostname,
                state=NodeState.ENROLLING,
                message="",
                cert_serial=format(identity.serial, "x"),
                cert_not_after=identity.not_after.timestamp(),
                joined=time.time(),
            )
        )
        # The commit point: from here on this node is the control of a cluster.
        store.set_cluster(
            ClusterRecord(
                cluster_id=cluster_id,
                role=Role.CONTROL,
                control_name=self._config.node_name,
                control_address=address,
                bootstrap_port=self._config.listen_port,
                cluster_port=self._config.cluster_port,
                ca_fingerprint=security.fingerprint(ca.cert),
                ca_not_after=ca.cert.not_valid_after_utc.timestamp(),
            )
        )
        self._ca, self._verifier = ca, (verifier, kdf)
        await self._on_member()
        return (
            f"cluster {cluster_id} created; CA fingerprint "
            f"{security.fingerprint(ca.cert)[:16]}…, listening for joins on "
            f"{validate.format_host_port(address, self._config.listen_port)}"
        )

    # ------------------------------------------------------- bootstrap --

    def _cluster(self) -> ClusterRecord:
        cluster = self._store.cluster()
        if cluster is None or cluster.role is not Role.CONTROL:
            raise errors.NotControl(
                "this node is not the control node of a cluster (run `microstackctl init "
                "--role control` on it first)"
            )
        return cluster

    def _load_secrets(self) -> tuple[security.CertificateAuthority, bytes, security.KdfParams]:
        if self._ca is None or self._verifier is None:
            key, cert, blob = (
                self._store.read_file(CA_KEY),
                self._store.read_file(CA_CERT),
                self._store.read_file(VERIFIER),
            )
            if key is None or cert is None or blob is None:
                raise errors.StorageError("the cluster CA or password verifier is missing")
            self._ca = security.CertificateAuthority(
                key=security.load_key(key), cert=security.load_cert(cert)
            )
            self._verifier = _load_verifier(blob)
        return self._ca, *self._verifier

    def begin_bootstrap(
        self, hello: security.Hello, source: str, agent_port: int = 0, token_id: str = ""
    ) -> tuple[BootstrapSession, str, security.KdfParams, bytes]:
        cluster = self._cluster()
        wait = self._limiter.retry_after(source, time.monotonic())
        if wait > 0:
            log.warning("bootstrap refused source=%s reason=rate-limited wait=%.1fs", source, wait)
            raise errors.TooManyAttempts(
                f"too many failed attempts from {source}: try again in {wait:.0f} s"
            )
        validate.node_name(hello.node_name, "node name")
        validate.ip_address(hello.address, "node address")
        validate.hostname(hello.hostname, "hostname")
        if hello.version != 1:
            raise errors.BootstrapProtocolError(
                f"bootstrap protocol version {hello.version} is not supported "
                "(this control speaks 1)"
            )
        # Whether the name is taken is told only after the password is proven:
        # the bootstrap port must not list the cluster's nodes to strangers.
        _ca, verifier, kdf = self._load_secrets()
        if token_id:
            verifier = self._token_verifier(token_id, hello.node_name)
        exchange = security.ControlExchange(
            verifier, cluster.cluster_id, kdf, hello, self._bootstrap_fingerprint
        )
        return (
            BootstrapSession(hello, exchange, source, agent_port, token_id),
            cluster.cluster_id,
            kdf,
            exchange.challenge(),
        )

    def _check_name_free(self, name: str) -> NodeRecord | None:
        existing = self._store.node(name)
        if existing is None or existing.state in (NodeState.REMOVED, NodeState.PENDING):
            return existing
        raise errors.NameTaken(
            f"a node named {name!r} is already in the cluster ({existing.state.value}, "
            f"address {existing.address}); remove it first or join under another name"
        )

    def finish_bootstrap(
        self, session: BootstrapSession, pake_message: bytes, csr_pem: bytes, confirmation: bytes
    ) -> BootstrapResult:
        cluster = self._cluster()
        hello = session.hello
        try:
            session.exchange.check_response(pake_message, csr_pem, confirmation)
        except (errors.WrongPassword, errors.BootstrapProtocolError) as exc:
            # Malformed PAKE material counts as a guess too (security.py, rule 6).
            wrong = isinstance(exc, errors.WrongPassword)
            delay = self._limiter.failed(session.source, time.monotonic())
            log.warning(
                "bootstrap failed source=%s node=%s reason=%s lockout=%.1fs",
                session.source,
                hello.node_name,
                "wrong-password" if wrong else "protocol-error",
                delay,
            )
            if wrong and session.token_id:
                raise errors.WrongPassword("the control node rejected the join token") from None
            if wrong:
                raise errors.WrongPassword(
                    "the control node rejected the cluster password"
                ) from None
            raise
        self._limiter.succeeded(session.source)
        existing = self._check_name_free(hello.node_name)
        if session.token_id and not self._store.set_token_state(
            session.token_id, "used", expect="valid"
        ):
            raise errors.TokenRejected("this join token was used or revoked while it was in use")
        ca, _verifier, _kdf = self._load_secrets()
        cert = security.sign_csr(
            ca,
            csr_pem,
            node_name=hello.node_name,
            role=Role.COMPUTE.value,
            address=hello.address,
            hostname=hello.hostname,
            now=_now(),
        )
        identity = security.identity_of(cert)
        self._store.put_node(
            NodeRecord(
                name=hello.node_name,
                role=Role.COMPUTE,
                address=hello.address,
                hostname=hello.hostname,
                state=NodeState.PENDING,
                message="certificate issued",
                cert_serial=format(identity.serial, "x"),
                cert_not_after=identity.not_after.timestamp(),
                joined=time.time(),
                agent_port=session.agent_port,
            ),
            replaces_serial=existing.cert_serial if existing else None,
        )
        log.info(
            "bootstrap succeeded source=%s node=%s serial=%x",
            session.source,
            hello.node_name,
            identity.serial,
        )
        cert_pem = security.cert_to_pem(cert)
        ca_pem = security.cert_to_pem(ca.cert)
        return BootstrapResult(
            certificate_pem=cert_pem,
            ca_certificate_pem=ca_pem,
            control_name=cluster.control_name,
            cluster_port=cluster.cluster_port,
            confirmation=session.exchange.result_confirmation(
                cert_pem, ca_pem, cluster.control_name, cluster.cluster_port
            ),
        )

    # ---------------------------------------------------------- tokens --

    def _token_verifier(self, token_id: str, name: str) -> bytes:
        found = self._store.token(token_id)
        if found is None:
            raise errors.TokenRejected("this join token is unknown to the control node")
        token, verifier = found
        state = token.state_at(time.time())
        if state != "valid":
            raise errors.TokenRejected(
                f"this join token is {state}; make a new one with "
                f"`microstackctl add-node {token.name}` on the control node"
            )
        if token.name != name:
            raise errors.TokenRejected(
                f"this join token is for a node named {token.name!r}, not {name!r} "
                "(start microstackd with --node-name to match, or make a token for this name)"
            )
        return verifier

    def create_token(self, name: str, ttl: int) -> tuple[str, TokenRecord]:
        cluster = self._cluster()
        validate.node_name(name, "node name")
        if not 0 < ttl <= tokens.MAX_TTL:
            raise errors.InvalidArgument("ttl must be between 1 second and 30 days")
        self._check_name_free(name)
        now = time.time()
        where = validate.format_host_port(cluster.control_address, cluster.bootstrap_port)
        token = tokens.new(
            name, (where,), self._bootstrap_fingerprint, cluster.ca_fingerprint, int(now + ttl)
        )
        record = TokenRecord(token.id, name, now, float(token.expires), "valid")
        self._store.put_token(record, token.verifier)
        log.info("join token created id=%s node=%s expires=%d", token.id, name, token.expires)
        return tokens.encode(token), record

    def list_tokens(self) -> list[TokenRecord]:
        self._cluster()
        return self._store.tokens()

    def revoke_token(self, id_or_name: str) -> TokenRecord:
        self._cluster()
        now = time.time()
        matches = [t for t in self._store.tokens() if id_or_name in (t.id, t.name)]
        valid = [t for t in matches if t.state_at(now) == "valid"]
        if not matches:
            raise errors.NotFound(f"no join token with id or node name {id_or_name!r}")
        if not valid:
            raise errors.InvalidArgument(
                f"no valid join token for {id_or_name!r} (it is {matches[0].state_at(now)})"
            )
        for token in valid:
            self._store.set_token_state(token.id, "revoked")
            log.info("join token revoked id=%s node=%s", token.id, token.name)
        revoked = self._store.token(valid[0].id)
        assert revoked is not None
        return revoked[0]

    # ---------------------------------------------------------- remove --

    async def remove(self, name: str, force: bool) -> tuple[NodeRecord, str]:
        cluster = self._cluster()
        node = self._store.node(validate.node_name(name, "node name"))
        if node is None:
            raise errors.NotFound(f"no node named {name!r} in the cluster")
        if node.role is Role.CONTROL or node.name == cluster.control_name:
            raise errors.InvalidArgument("the control node cannot be removed from its own cluster")
        if node.state is NodeState.REMOVED:
            return node, f"{name} was already removed"
        self._runner.cancel(node.name)
        told = "it runs no agent"
        if node.agent_port:
            client = peer.AgentClient(node, credentials.load(self._store))
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
        runner, _why = self.cloud_runner()
        if runner is not None:
            try:
                result = await runner.run("remove", {"host": node.name}, timeout=90)
                message += f"; {result.get('message', 'Nova compute service deleted')}"
            except errors.CloudError as exc:
                log.warning("nova service delete failed node=%s error=%s", node.name, exc.message)
                message += f"; its Nova compute service could not be deleted: {exc.message}"
        self._nova_view = (0.0, {})
        return removed, message

    # ------------------------------------------------------- heartbeat --

    def heartbeat(self, identity: security.Identity, services: list[ServiceRecord]) -> int:
        self._store.touch_node(identity.name, time.time())
        if services:
            self._store.set_services(identity.name, services)
        return self.heartbeat_interval

    @property
    def heartbeat_interval(self) -> int:
        return max(1, int(self._config.unreachable_after / 3))

    # ---------------------------------------------------------- enrol --

    def resume_enrolments(self) -> None:
        """After a restart: carry on every enrolment that was under way."""
        if self._store.cluster() is None:
            return
        for node in self._store.nodes():
            if node.role is Role.COMPUTE and node.state is NodeState.ENROLLING:
                log.info("resuming enrolment node=%s", node.name)
                self._runner.ensure_running(
                    node.name, enrolment.COMPUTE_PLAN, self._compute_actions()
                )

    def enrol(self, identity: security.Identity, after_seq: int | None = None) -> int:
        """Start or resume the caller's enrolment; return the seq to follow from."""
        node = self._store.node(identity.name)
        assert node is not None  # authorise() admitted only known nodes
        after = self._store.last_seq(node.name) if after_seq is None else after_seq
        self._runner.ensure_running(node.name, enrolment.COMPUTE_PLAN, self._compute_actions())
        return after

    def _compute_actions(self) -> Mapping[str, StepAction]:
        return {
            enrolment.ADMIT: self._admit,
            enrolment.ISSUE_CONFIG: self._issue_config,
            enrolment.CONFIGURE_NODE: self._configure_node,
            enrolment.ADMIT_TO_CLOUD: self._admit_to_cloud,
            enrolment.DONE: self._compute_done,
        }

    def _node(self, name: str) -> NodeRecord:
        node = self._store.node(name)
        if node is None or node.state is NodeState.REMOVED:
            raise errors.NotFound(f"node {name} is no longer in the cluster")
        return node

    def load_control_config(self) -> control_config.ControlConfig:
        """control.yaml, re-read only when the file changed (every join needs
        it twice; parsing and re-dumping it was a measurable part of a join)."""
        cluster = self._cluster()
        path = self._config.control_config_path
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            stamp = -1
        cached = self._control_config_cache
        if cached is not None and cached[0] == stamp:
            return cached[1]
        config = control_config.ensure(path, cluster.control_address)
        try:
            self._control_config_cache = (path.stat().st_mtime_ns, config)
        except OSError:
            self._control_config_cache = None
        return config

    async def _issue_config(self, ctx: StepContext) -> str:
        node = self._node(ctx.node)
        config = self.load_control_config()
        settings = control_config.issue_compute_settings(config, node)
        return f"{len(settings)} settings for {node.name}: {config.public_summary()}"

    async def _configure_node(self, ctx: StepContext) -> str | Skipped:
        node = self._node(ctx.node)
        if not node.agent_port:
            # A joiner that announced no agent port (a bare API client, the
            # benchmarks' simulated nodes) has no services to configure.
            return Skipped(f"{node.name} runs no agent: no services to configure")
        settings = control_config.issue_compute_settings(self.load_control_config(), node)
        attempt, delay = 0, 1.0
        while True:
            client = peer.AgentClient(node, credentials.load(self._store))
            try:
                return await self._apply_compute_role(ctx, client, node, settings)
            except errors.NodeUnreachable as exc:
                # The node's daemon is down or cut off: wait for it, however long.
                attempt += 1
                await ctx.progress(
                    f"waiting for the agent of {node.name} (attempt {attempt}): {exc.message}",
                    waiting=True,
                )
            finally:
                await client.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _apply_compute_role(
        self, ctx: StepContext, client: peer.AgentClient, node: NodeRecord, settings: dict[str, str]
    ) -> str:
        try:
            async for step in client.apply_role("compute", settings):
                if step.final:
                    self._store.set_services(node.name, list(step.services))
                    return step.message
                await ctx.progress(f"{step.step}: {step.message}", step.percent)
        except errors.NodeUnreachable:
            raise
        except errors.MicrostackError:
            with contextlib.suppress(errors.MicrostackError):
                self._store.set_services(node.name, await client.services())
            raise
        raise errors.NodeUnreachable(f"the agent of {node.name} ended its stream without a result")

    # ----------------------------------------------------------- cloud --

    def cloud_runner(self) -> tuple[cloud.Runner | None, str]:
        """How to reach the control's cloud, or None and why not."""
        ref = cloud.resolve(dict(self.load_control_config().cloud), os.environ)
        if ref is None:
            return None, cloud.NO_CLOUD
        prefix = self._config.openstack_prefix
        if prefix is None:
            return None, (
                f"cloud {ref.name!r} is configured but no OpenStack environment "
                "(--openstack-prefix) to reach it"
            )
        return cloud.Runner(ref, prefix / "bin" / "python", helpers_dir() / "cloud_ops.py"), ""

    async def _admit_to_cloud(self, ctx: StepContext) -> str | Skipped:
        node = self._node(ctx.node)
        runner, why = self.cloud_runner()
        if runner is None:
            return Skipped(why)
        if not node.agent_port:
            return Skipped(f"{node.name} runs no agent: no nova-compute to admit")
        config = self.load_control_config()
        manage = cloud.nova_manage_argv(self._config.openstack_prefix, self._config.config_root)
        request = {
            "host": node.name,
            "timeout": ADMIT_TIMEOUT,
            "nova_manage": manage,
            "discover_interval": config.discover_hosts_interval,
        }

        async def progress(message: str, waiting: bool) -> None:
            await ctx.progress(message, waiting=waiting)

        admit = runner.run("admit", request, progress, timeout=4 * ADMIT_TIMEOUT)
        result = await servicewatch.unless_a_service_fails(
            admit, self._agent_services(node), node.name, "it was being admitted to Nova"
        )
        self._nova_view = (0.0, {})
        return (
            f"{node.name} admitted to Nova: {result.get('service')}; "
            f"{result.get('mapping')}; {result.get('hypervisor')}"
        )

    def _agent_services(self, node: NodeRecord) -> servicewatch.Fetch:
        """Ask the node's agent for its services (and keep them for ``status``)."""

        async def fetch() -> list[ServiceRecord]:
            client = peer.AgentClient(node, credentials.load(self._store))
            try:
                services = await client.services()
            finally:
                await client.close()
            self._store.set_services(node.name, services)
            return services

        return fetch

    async def launch(self, request: Mapping[str, str], progress: cloud.Progress) -> dict[str, Any]:
        """Boot a server on the cloud (``cloud_ops.py launch``); its result."""
        self._cluster()
        runner, why = self.cloud_runner()
        if runner is None:
            raise errors.CloudError(f"cannot launch: {why}")
        if not request.get("image"):
            raise errors.InvalidArgument("an image name is needed")
        result = await runner.run("launch", dict(request), progress, timeout=900)
        self._nova_view = (0.0, {})
        return result

    async def nova_view(self) -> dict[str, dict[str, Any]]:
        """Nova's view per compute host, at most NOVA_VIEW_MAX_AGE old; {}
        without a cloud or when it cannot be asked (status must answer)."""
        try:
            runner, _why = self.cloud_runner()
        except errors.MicrostackError:
            return {}
        if runner is None:
            return {}
        async with self._nova_lock:
            at, hosts = self._nova_view
            if time.monotonic() - at <= NOVA_VIEW_MAX_AGE:
                return hosts
            try:
                result = await runner.run("view", {}, timeout=10)
                hosts = dict(result.get("hosts") or {})
            except errors.CloudError as exc:
                log.warning("cannot read Nova's view: %s", exc.message)
                hosts = {}
            self._nova_view = (time.monotonic(), hosts)
            return hosts

    async def _compute_done(self, ctx: StepContext) -> str:
        ctx.update_node(seen=True)  # heartbeats take over from here
        return f"{ctx.node} is an active compute node of cluster {self._cluster().cluster_id}"

    async def _control_done(self, ctx: StepContext) -> str:
        cluster = self._cluster()
        where = validate.format_host_port(cluster.control_address, cluster.bootstrap_port)
        return (
            f"{ctx.node} is the control node of cluster {cluster.cluster_id}; "
            f"computes join with `microstackctl join {where}`"
        )

    async def _admit(self, ctx: StepContext) -> str:
        node = self._store.node(ctx.node)
        if node is None:
            raise errors.NotFound(f"node {ctx.node} is no longer in the cluster")
        ctx.update_node(NodeState.ENROLLING)
        return (
            f"{node.name} admitted: compute node at {node.address}, "
            f"certificate serial {node.cert_serial[:16]}"
        )

    # --------------------------------------------------------- status --

    def status(self) -> tuple[ClusterRecord, list[NodeRecord]]:
        """The cluster and its nodes; an active member not heard from within
        ``unreachable_after`` is shown ``unreachable``."""
        cluster = self._cluster()
        stale = time.time() - self._config.unreachable_after
        nodes = [
            dataclasses.replace(n, state=NodeState.UNREACHABLE)
            if n.role is Role.COMPUTE and n.state is NodeState.ACTIVE and n.last_seen < stale
            else n
            for n in self._store.nodes()
        ]
        return cluster, nodes

    def authorise(self, identity: security.Identity, access: Access) -> None:
        serial = format(identity.serial, "x")
        if self._store.is_revoked(serial):
            raise errors.PermissionDenied(
                f"certificate {serial[:16]} of {identity.name} is revoked"
            )
        node = self._store.node(identity.name)
        if node is None or node.cert_serial != serial or node.state is NodeState.REMOVED:
            raise errors.PermissionDenied(
                f"{identity.name} (certificate {serial[:16]}) is not a member of this cluster"
            )
        if access is Access.CONTROL:
            raise errors.PermissionDenied("only the control node may make this call")


def _verifier_json(verifier: bytes, kdf: security.KdfParams) -> bytes:
    return json.dumps(
        {
            "kdf": "scrypt",
            "salt": kdf.salt.hex(),
            "log2_n": kdf.log2_n,
            "r": kdf.r,
            "p": kdf.p,
            "verifier": verifier.hex(),
        }
    ).encode()


def _load_verifier(blob: bytes) -> tuple[bytes, security.KdfParams]:
    data = json.loads(blob)
    kdf = security.KdfParams(
        salt=bytes.fromhex(data["salt"]), log2_n=data["log2_n"], r=data["r"], p=data["p"]
    )
    return bytes.fromhex(data["verifier"]), kdf
