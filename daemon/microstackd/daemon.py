"""Wiring and lifetime, nothing else: the store, the domain objects, the
servicers built with the domain objects they need, and the three servers.

    Unix socket  AdminService                  (Channel.LOCAL)
    --listen     BootstrapService, TLS only    (Channel.BOOTSTRAP)
    cluster port ClusterService, AgentService, mutual TLS (Channel.CLUSTER; once a member)

What each server serves is ``api/access.py``'s table. grpc's Python server
cannot ask for a client certificate on some calls and not others
(DESIGN.md, measured), hence two TCP ports. Port 0 means any free port: the
bootstrap port is bound as asked and read back; a cluster port of 0 is
reserved at start-up (bound, not listening) so that the hello can announce
it before this node has the certificate to serve it. The ports bound are in
the ``ready`` log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import resource
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd import errors
from microstackd.api import access
from microstackd.api.access import HEALTH, REFLECTION, Channel
from microstackd.api.gate import Gate, Limits
from microstackd.api.servicers.admin import AdminServicer
from microstackd.api.servicers.agent import AgentServicer
from microstackd.api.servicers.bootstrap import BootstrapServicer
from microstackd.api.servicers.cluster import ClusterServicer
from microstackd.cloud.service import Cloud
from microstackd.config import SOCKET_GROUP, DaemonConfig, Ports
from microstackd.control.backup import Backups
from microstackd.control.beats import Beats
from microstackd.control.bootstrap import Bootstrap
from microstackd.control.certs import Certificates
from microstackd.control.cluster import Cluster
from microstackd.control.enrol import Enrolments
from microstackd.control.members import Members
from microstackd.control.node_accounts import NodeAccounts
from microstackd.control.plane import ControlPlane
from microstackd.control.reconfigure import Reconfigure
from microstackd.control.restore import Restores
from microstackd.control.rotation import Rotation
from microstackd.control.secret_rotation import SecretRotation
from microstackd.control.tokens import Tokens
from microstackd.control.tunnels import ControlTunnels
from microstackd.enrolment.events import EventBus, Signal
from microstackd.enrolment.runner import Runner
from microstackd.member.callers import Callers
from microstackd.member.heartbeat import Heartbeats
from microstackd.member.join import Member
from microstackd.member.renewal import Renewal
from microstackd.model import BootstrapCertificate, Role
from microstackd.node.agent import Agent
from microstackd.node.services import make_manager
from microstackd.store import Store
from microstackd.store.files import BOOTSTRAP_CERT, BOOTSTRAP_KEY, CA_CERT, NODE_CERT, NODE_KEY
from microstackd.store.lock import StateLock
from microstackd.trust import names, x509
from microstackd.trust.x509 import Identity
from microstackd.wire.credentials import ServerIdentity
from microstackd.wire.options import SERVER_OPTIONS, bootstrap_server_options

log = logging.getLogger(__name__)

_API = "microstack.cluster.v1."
#: Services listed by server reflection on the local socket.
REFLECTED_SERVICES = (
    pb.DESCRIPTOR.services_by_name["AdminService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        # First: a second daemon on this state directory must touch nothing.
        self._lock = StateLock.acquire(config.state_dir)
        self.ports = Ports(config.listen_port, config.cluster_port)
        self.store = store = Store(config.state_dir, config.node_name)
        self.bus = EventBus(store)
        self.runner = Runner(store, self.bus, step_delays=config.step_delays)
        key_pem, cert_pem = self._bootstrap_identity()
        #: The bootstrap port's certificate as served now (it renews itself).
        self.bootstrap_cert = bootstrap_cert = BootstrapCertificate(
            x509.fingerprint(cert_pem),
            x509.read_cert(cert_pem).not_valid_after_utc.timestamp(),
        )
        #: What the bootstrap port presents: follows renewals without a restart.
        self._bootstrap_tls = ServerIdentity(key_pem, cert_pem)
        #: What the cluster port presents and whose clients it accepts (once a member).
        self._cluster_tls: ServerIdentity | None = None
        self._placeholder: socket.socket | None = self._reserve_cluster_port()
        self.services = make_manager(config.service_manager, log_dir=config.state_dir / "logs")
        #: Raised when this node becomes a member (serve the mTLS port) or leaves it.
        self.joined, self.left = Signal("joined"), Signal("left")
        self.joined.subscribe(self.start_cluster_server)
        self.left.subscribe(self._close_cluster_server)
        #: Raised when this node's role services changed (heartbeat at once).
        self.services_changed = Signal("services changed")
        #: Raised when this node renewed its cluster or bootstrap certificate.
        self.renewed = Signal("certificate renewed")
        self.bootstrap_renewed = Signal("bootstrap certificate renewed")
        self.renewed.subscribe(self._serve_renewed)
        self.bootstrap_renewed.subscribe(self._serve_renewed_bootstrap)

        self.plane = ControlPlane(config, store, self.services)
        self.cluster = Cluster(config, store, self.runner, self.ports, self.joined, self.plane)
        self.cloud = Cloud(self.cluster.cloud)
        self.accounts = NodeAccounts(
            store,
            self.plane,
            self.cloud,
            lambda: self.plane.values(self.cluster.load_control_config()),
        )
        self.enrolments = Enrolments(
            self.cluster, self.runner, self.cloud, self.accounts, ControlTunnels(self.plane)
        )
        self.members = Members(self.cluster, self.runner, self.cloud, self.accounts)
        self.reconfigure = Reconfigure(self.cluster, self.accounts)
        self.secrets = SecretRotation(
            self.cluster,
            self.plane,
            self.cloud,
            self.accounts,
            self.reconfigure,
            step_delays=config.step_delays,
        )
        self.tokens = Tokens(self.cluster, bootstrap_cert)
        self.bootstrap = Bootstrap(self.cluster, self.runner, bootstrap_cert)
        self.certificates = Certificates(self.cluster)
        self.rotation = Rotation(self.cluster, self.certificates, self.renewed)
        # Members' heartbeat datagrams (the control's, on the cluster port's number).
        self.beats = Beats(store, self._beat_taken, lambda: self.members.heartbeat_interval)
        self.backups = Backups(config, self.cluster, self.plane)
        self.restores = Restores(
            config, self.cluster, self.runner, self.plane, self.ports, self.joined,
            bootstrap_cert, self.bootstrap_renewed,
        )  # fmt: skip
        self.agent = Agent(config, store, self.services, self.runner, self.services_changed)
        self.heartbeats = Heartbeats(store, self.agent.services, config.software)
        self.services_changed.subscribe(self.heartbeats.beat_now)
        # A renewed certificate's first use is the heartbeat it triggers.
        self.renewed.subscribe(self.heartbeats.beat_now)
        # Then the migration transport takes them (after: a slow libvirtd must not delay it).
        self.renewed.subscribe(self.agent.certificates_changed)
        self.renewal = Renewal(
            config, store, bootstrap_cert, self.certificates.renew_own,
            self.renewed, self.bootstrap_renewed,
        )  # fmt: skip
        self.member = Member(config, store, self.heartbeats, self.ports, self.joined, self.left)
        self.callers = Callers(store)
        #: gRPC health (grpc.health.v1) on every endpoint: SERVING once started.
        self.health = health_aio.HealthServicer()
        self._local: aio.Server | None = None
        self._bootstrap: aio.Server | None = None
        self._cluster: aio.Server | None = None
        #: The socket path is this daemon's to remove (it bound it).
        self._socket_bound = False
        #: The mTLS server closing after this node left its cluster.
        self._closing: asyncio.Future[None] | None = None
        #: In front of the bootstrap port (connection caps).
        self.gate: Gate | None = None

    def _bootstrap_identity(self) -> tuple[bytes, bytes]:
        """The bootstrap port's self-signed key pair, made once per node."""
        key_pem = self.store.read_file(BOOTSTRAP_KEY)
        cert_pem = self.store.read_file(BOOTSTRAP_CERT)
        if key_pem is None or cert_pem is None:
            key = x509.generate_key()
            cert = x509.self_signed_bootstrap_certificate(
                key,
                datetime.now(UTC),
                lifetime=timedelta(seconds=self.config.bootstrap_cert_lifetime),
            )
            key_pem, cert_pem = x509.key_to_pem(key), x509.cert_to_pem(cert)
            self.store.write_secret(BOOTSTRAP_KEY, key_pem)
            self.store.write_secret(BOOTSTRAP_CERT, cert_pem)
        try:
            x509.check_pair(key_pem, cert_pem)
        except ValueError as exc:
            tls = self.config.state_dir
            raise errors.MicrostackError(
                f"the bootstrap key pair {tls / BOOTSTRAP_KEY} and {BOOTSTRAP_CERT} is not a valid "
                f"one ({exc}): delete both and a new pair is made at the next start (join "
                "tokens made before name the old certificate: make them again)"
            ) from None
        return key_pem, cert_pem

    def _reserve_cluster_port(self) -> socket.socket:
        """Bind the cluster port now (not listening) and keep it until the mTLS
        server takes it over: the port is this daemon's from the start (port 0:
        any free one), and one that is taken is an error at start, not at join."""
        address = names.format_host_port(self.config.listen_host, self.ports.cluster)
        placeholder = _bound(address, f"the cluster port {address}")
        self.ports.cluster = int(placeholder.getsockname()[1])
        return placeholder

    # ----------------------------------------------------------- start --

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            # Stop what was started, so that no half-made server is left to
            # grpc's __del__ (a traceback on every failed start).
            await self.stop(0)
            raise

    async def _start(self) -> None:
        await self._start_local()
        await self._start_bootstrap()
        if self.store.cluster() is not None:
            self.cluster.resume()
            await self.start_cluster_server()
        await self.agent.resume()
        await self.plane.resume()
        self.enrolments.resume()
        self.reconfigure.start()
        self.secrets.start()  # a rotation left unfinished (only ever on the control)
        self.heartbeats.resume()
        self.renewal.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "ready node=%s listen=%s cluster_port=%d socket=%s services=%s",
            self.config.node_name,
            names.format_host_port(self.config.listen_host, self.ports.bootstrap),
            self.ports.cluster,
            self.config.socket,
            self.services.kind,
        )

    def _health(self) -> tuple[access.Adder, object]:
        return health_pb2_grpc.add_HealthServicer_to_server, self.health

    async def _start_local(self) -> None:
        path = self.config.socket
        path.parent.mkdir(parents=True, exist_ok=True)
        if _answers(path):
            raise errors.AlreadyRunning(
                f"another process serves the socket {path} (another microstackd?); "
                "stop it first, or give this one its own --socket"
            )
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._local = server = aio.server(options=SERVER_OPTIONS)
        admin = AdminServicer(
            self.config.node_name, self.store, self.bus, self.cluster, self.members,
            self.tokens, self.member, self.bootstrap_cert, self.rotation,
            self.backups, self.restores,
            reconfigure=self.reconfigure, secrets=self.secrets,
        )  # fmt: skip
        reflector = reflection.aio.ReflectionServicer(REFLECTED_SERVICES)
        access.register(
            server,
            Channel.LOCAL,
            {
                _API + "AdminService": (pb_grpc.add_AdminServiceServicer_to_server, admin),
                HEALTH: self._health(),
                REFLECTION: (reflection_pb2_grpc.add_ServerReflectionServicer_to_server, reflector),
            },
        )
        self._bind(server, f"unix:{path}", None, f"the socket {path}")
        self._socket_bound = True
        self.backups.write_proof()
        await server.start()
        os.chmod(path, 0o660)
        _hand_to_group(path, SOCKET_GROUP)

    async def _start_bootstrap(self) -> None:
        """The bootstrap port is the gate (per-source and total connection
        caps); the gRPC server behind it listens on loopback only."""
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        limits = Limits.within(
            self.config.bootstrap_per_source, self.config.bootstrap_connections, fd_limit
        )
        self.gate = Gate(limits)
        self._bootstrap = server = aio.server(options=bootstrap_server_options(limits.total))
        bootstrap = BootstrapServicer(self.bootstrap, self.gate.source_of)
        access.register(
            server,
            Channel.BOOTSTRAP,
            {
                _API + "BootstrapService": (
                    pb_grpc.add_BootstrapServiceServicer_to_server,
                    bootstrap,
                ),
                HEALTH: self._health(),
            },
        )
        tls = self._bootstrap_tls.credentials()
        address = names.format_host_port(self.config.listen_host, self.ports.bootstrap)
        what = f"the bootstrap port {address}"
        backend = self._bind(server, "127.0.0.1:0", tls, f"the loopback end of {what}")
        await server.start()
        _bound(address, what).close()  # says why not, if it cannot be had
        try:
            self.ports.bootstrap = await self.gate.start(
                self.config.listen_host, self.ports.bootstrap, ("127.0.0.1", backend)
            )
        except OSError as exc:
            raise errors.MicrostackError(f"cannot listen on {what}: {exc}") from exc
        log.info(
            "bootstrap port limits per_source=%d connections=%d fd_limit=%d",
            limits.per_source, limits.total, fd_limit,
        )  # fmt: skip

    async def start_cluster_server(self) -> None:
        """Serve the mTLS port; at start-up once a member, and when this node joins."""
        if self._closing is not None:  # it left just before: the old server goes first
            closing, self._closing = self._closing, None
            await closing
        if self._cluster is not None:
            return
        creds = self.store.credentials()
        try:
            x509.check_pair(creds.key_pem, creds.cert_pem)
            x509.read_bundle(creds.ca_pem)
        except ValueError as exc:
            raise errors.MicrostackError(
                f"this node's cluster key pair {self.config.state_dir / NODE_KEY} and "
                f"{NODE_CERT} (or {CA_CERT}) is not a valid one ({exc}): restore them from a "
                "backup (a compute may instead be removed on the control and join again)"
            ) from None
        self._cluster = server = aio.server(options=SERVER_OPTIONS)
        access.register(
            server,
            Channel.CLUSTER,
            {
                _API + "ClusterService": (
                    pb_grpc.add_ClusterServiceServicer_to_server,
                    ClusterServicer(
                        self.enrolments,
                        self.members,
                        self.bus,
                        self.certificates,
                        self.rotation,
                        self.beats,
                    ),
                ),
                _API + "AgentService": (
                    pb_grpc.add_AgentServiceServicer_to_server,
                    AgentServicer(self.agent, self.member, self.renewal),
                ),
                HEALTH: self._health(),
            },
            self.callers,
        )
        self._cluster_tls = ServerIdentity(creds.key_pem, creds.cert_pem, creds.ca_pem)
        tls = self._cluster_tls.credentials()
        address = names.format_host_port(self.config.listen_host, self.ports.cluster)
        if self._placeholder is not None:  # hand the reserved port over to the server
            self._placeholder.close()
            self._placeholder = None
        self._bind(server, address, tls, f"the cluster port {address}")
        await server.start()
        cluster = self.store.cluster()
        if cluster is not None and cluster.role is Role.CONTROL and self.config.heartbeat_datagrams:
            await self.beats.open(self.config.listen_host, self.ports.cluster)

    def _beat_taken(self, identity: Identity) -> None:
        """A member's heartbeat datagram was taken: it is alive, and if a CA
        rotation waits for it, it moves now (as for a heartbeat call)."""
        self.members.alive(identity)
        self.rotation.noticed(identity)

    async def _serve_renewed(self) -> None:
        """This node renewed its cluster certificate: the mTLS port presents
        it (and trusts the bundle that came with it) from the next handshake."""
        if self._cluster_tls is not None:
            creds = self.store.credentials()
            self._cluster_tls.update(creds.key_pem, creds.cert_pem, creds.ca_pem)

    async def _serve_renewed_bootstrap(self) -> None:
        key_pem = self.store.read_file(BOOTSTRAP_KEY)
        cert_pem = self.store.read_file(BOOTSTRAP_CERT)
        if key_pem is not None and cert_pem is not None:
            self._bootstrap_tls.update(key_pem, cert_pem)

    async def _close_cluster_server(self) -> None:
        """This node left its cluster: close the mTLS port once the answer to
        the control's Leave is on its way, and keep the port reserved (no
        SO_REUSEPORT: a join right after must wait for the close, not share)."""
        server, self._cluster = self._cluster, None
        self._cluster_tls = None
        self.beats.close()
        if server is None:
            return

        async def close() -> None:
            await asyncio.sleep(0.5)
            await server.stop(1.0)
            if self._cluster is None and self._placeholder is None:
                try:
                    self._placeholder = self._reserve_cluster_port()
                except errors.MicrostackError as exc:  # the next join says it again
                    log.warning("cluster port not reserved after leaving: %s", exc.message)

        self._closing = asyncio.ensure_future(close())

    @staticmethod
    def _bind(
        server: aio.Server,
        address: str,
        credentials: grpc.ServerCredentials | None,
        what: str,
    ) -> int:
        """Bind ``address``; the port bound (the one asked for, or any for 0)."""
        if not address.startswith("unix:"):
            _bound(address, what).close()
        try:
            if credentials is None:
                return int(server.add_insecure_port(address))
            return int(server.add_secure_port(address, credentials))
        except RuntimeError as exc:
            raise errors.MicrostackError(
                f"cannot listen on {what}: address in use or not on this host ({exc})"
            ) from exc

    # ------------------------------------------------------------ stop --

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting calls, end live streams with a clear status, let
        in-flight calls finish within ``grace`` s, then stop the services this
        daemon runs and close the store."""
        await self.health.enter_graceful_shutdown()
        if self.gate is not None:
            await self.gate.close()
        self.bus.shutdown()
        await self.members.end_streams()  # members' heartbeat streams (on the control)
        self.beats.close()
        servers = [s for s in (self._bootstrap, self._cluster, self._local) if s is not None]
        await asyncio.gather(*(s.stop(grace) for s in servers))
        if self._closing is not None:
            await self._closing
        await self.secrets.close()
        await self.reconfigure.close()
        await self.heartbeats.stop()
        await self.renewal.stop()
        await self.rotation.close()
        await self.agent.close()
        await self.plane.close()
        await self.services.close()
        self.cloud.close()
        if self._placeholder is not None:
            self._placeholder.close()
        if self._socket_bound:
            with contextlib.suppress(FileNotFoundError):
                self.config.socket.unlink()
            self.backups.remove_proof()
        self.runner.stop()
        with contextlib.suppress(errors.MicrostackError):
            self.runner.flush()
        self.members.flush()
        self.store.close()
        self._lock.release()

    async def wait(self) -> None:
        assert self._local is not None
        await self._local.wait_for_termination()


def _hand_to_group(path: Path, group: str) -> None:
    """The socket's group: its members may use it (docs/security.md). Where
    there is no such group the socket stays root's alone."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return
    try:
        os.chown(path, -1, gid)
    except OSError as exc:
        log.warning(
            "cannot hand the socket to its group socket=%s group=%s error=%s", path, group, exc
        )


def _answers(path: os.PathLike[str]) -> bool:
    """Whether something accepts connections on the Unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(os.fspath(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _bound(address: str, what: str) -> socket.socket:
    """A socket bound to ``address`` (not listening), or an error that says
    precisely why not (grpc says only that binding failed): in use, or not an
    address of this host. SO_REUSEADDR as grpc sets it, so that connections
    of a previous run in TIME_WAIT do not count."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, int(port)))
    except OSError as exc:
        probe.close()
        if exc.errno == errno.EADDRINUSE:
            raise errors.MicrostackError(
                f"cannot listen on {what}: the address is in use (another microstackd?)"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise errors.MicrostackError(
                f"cannot listen on {what}: {host} is not an address of this host"
            ) from None
        raise errors.MicrostackError(f"cannot listen on {what}: {exc.strerror or exc}") from None
    return probe
