"""Wiring and lifetime: the store, the domain objects and the three servers.

    Unix socket  AdminService                  (Channel.LOCAL)
    --listen     BootstrapService, TLS only    (Channel.BOOTSTRAP)
    cluster port ClusterService, mutual TLS    (Channel.CLUSTER; once a member)

grpc's Python server cannot ask for a client certificate on some calls and
not others (DESIGN.md, measured), hence two TCP ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from datetime import UTC, datetime

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd import credentials, errors, security, validate
from microstackd.agent import Agent
from microstackd.config import DaemonConfig
from microstackd.control import Control
from microstackd.credentials import BOOTSTRAP_CERT, BOOTSTRAP_KEY
from microstackd.events import EventBus
from microstackd.member import Member
from microstackd.model import Access, Role, ServiceRecord
from microstackd.node.services import ServiceStatus, make_manager
from microstackd.plane import ControlPlane
from microstackd.rpc import servicers
from microstackd.rpc.auth import AuthInterceptor, Channel
from microstackd.rpc.options import SERVER_OPTIONS
from microstackd.runner import Runner
from microstackd.store import Store

log = logging.getLogger(__name__)

#: Services listed by server reflection on the local socket.
REFLECTED_SERVICES = (
    pb.DESCRIPTOR.services_by_name["AdminService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
    reflection.SERVICE_NAME,
)


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.store = Store(config.state_dir)
        self.bus = EventBus(self.store)
        self.runner = Runner(self.store, self.bus, step_delays=config.step_delays)
        self._bootstrap_key, self._bootstrap_cert = self._bootstrap_identity()
        fingerprint = security.fingerprint(self._bootstrap_cert)
        self.services = make_manager(config.service_manager, log_dir=config.state_dir / "logs")
        self.plane = ControlPlane(config, self.store, self.services)
        self.control = Control(
            config, self.store, self.runner, fingerprint, self.start_cluster_server, self.plane
        )
        self.agent = Agent(config, self.store, self.services)
        self.member = Member(config, self.store, self.start_cluster_server, self._service_records)
        #: gRPC health (grpc.health.v1) on every endpoint: SERVING once started.
        self.health = health_aio.HealthServicer()
        self._local: aio.Server | None = None
        self._bootstrap: aio.Server | None = None
        self._cluster: aio.Server | None = None

    def _bootstrap_identity(self) -> tuple[bytes, bytes]:
        """The bootstrap port's self-signed key pair, made once per node."""
        key_pem = self.store.read_file(BOOTSTRAP_KEY)
        cert_pem = self.store.read_file(BOOTSTRAP_CERT)
        if key_pem is None or cert_pem is None:
            key = security.generate_key()
            cert = security.self_signed_bootstrap_certificate(key, datetime.now(UTC))
            key_pem, cert_pem = security.key_to_pem(key), security.cert_to_pem(cert)
            self.store.write_secret(BOOTSTRAP_KEY, key_pem)
            self.store.write_secret(BOOTSTRAP_CERT, cert_pem)
        return key_pem, cert_pem

    # ----------------------------------------------------------- start --

    async def start(self) -> None:
        await self._start_local()
        await self._start_bootstrap()
        if self.store.cluster() is not None:
            await self.start_cluster_server()
        await self.agent.resume()
        await self.plane.resume()
        self.control.resume_enrolments()
        self.member.resume()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "ready node=%s listen=%s cluster_port=%d socket=%s services=%s",
            self.config.node_name,
            validate.format_host_port(self.config.listen_host, self.config.listen_port),
            self.config.cluster_port,
            self.config.socket,
            self.services.kind,
        )

    async def _start_local(self) -> None:
        path = self.config.socket
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = aio.server(interceptors=[AuthInterceptor(Channel.LOCAL)], options=SERVER_OPTIONS)
        pb_grpc.add_AdminServiceServicer_to_server(servicers.AdminServicer(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(REFLECTED_SERVICES, server)
        self._bind(server, f"unix:{path}", None, f"the socket {path}")
        await server.start()
        os.chmod(path, 0o660)
        self._local = server

    async def _start_bootstrap(self) -> None:
        server = aio.server(
            interceptors=[AuthInterceptor(Channel.BOOTSTRAP)], options=SERVER_OPTIONS
        )
        pb_grpc.add_BootstrapServiceServicer_to_server(servicers.BootstrapServicer(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        tls = grpc.ssl_server_credentials([(self._bootstrap_key, self._bootstrap_cert)])
        address = validate.format_host_port(self.config.listen_host, self.config.listen_port)
        self._bind(server, address, tls, f"the bootstrap port {address}")
        await server.start()
        self._bootstrap = server

    async def start_cluster_server(self) -> None:
        """Serve the mTLS port; called at start-up and once this node joins."""
        if self._cluster is not None:
            return
        creds = credentials.load(self.store)
        server = aio.server(
            interceptors=[AuthInterceptor(Channel.CLUSTER, self)], options=SERVER_OPTIONS
        )
        pb_grpc.add_ClusterServiceServicer_to_server(servicers.ClusterServicer(self), server)
        pb_grpc.add_AgentServiceServicer_to_server(servicers.AgentServicer(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        tls = grpc.ssl_server_credentials(
            [(creds.key_pem, creds.cert_pem)],
            root_certificates=creds.ca_pem,
            require_client_auth=True,
        )
        address = validate.format_host_port(self.config.listen_host, self.config.cluster_port)
        self._bind(server, address, tls, f"the cluster port {address}")
        await server.start()
        self._cluster = server

    async def _service_records(self) -> list[ServiceRecord]:
        return [
            ServiceRecord(s.name, s.state, s.message, s.detail) for s in await self.agent.services()
        ]

    async def leave(self) -> list[ServiceStatus]:
        """This node was removed: stop its services, forget the cluster, and
        close the mTLS port (after this call's answer is on its way)."""
        stopped = await self.agent.stop_role()
        await self.member.forget()
        server, self._cluster = self._cluster, None
        if server is not None:
            asyncio.get_running_loop().call_later(
                0.5, lambda: asyncio.ensure_future(server.stop(1.0))
            )
        return stopped

    @staticmethod
    def _bind(
        server: aio.Server,
        address: str,
        credentials: grpc.ServerCredentials | None,
        what: str,
    ) -> None:
        try:
            if credentials is None:
                server.add_insecure_port(address)
            else:
                server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise errors.MicrostackError(
                f"cannot listen on {what}: address in use or not on this host ({exc})"
            ) from exc

    # ------------------------------------------------------------ auth --

    def authorise(self, identity: security.Identity, access: Access) -> None:
        cluster = self.store.cluster()
        if cluster is None:
            raise errors.PermissionDenied("this node is in no cluster")
        if cluster.role is Role.CONTROL:
            self.control.authorise(identity, access)
            return
        if access is not Access.CONTROL:
            raise errors.PermissionDenied("a compute node serves only its control node")
        if identity.role != Role.CONTROL.value or identity.name != cluster.control_name:
            raise errors.PermissionDenied(
                f"{identity.name} is not the control node of this node's cluster"
            )

    # ------------------------------------------------------------ stop --

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting calls, end live streams with a clear status, let
        in-flight calls finish within ``grace`` s, then stop the services this
        daemon runs and close the store."""
        await self.health.enter_graceful_shutdown()
        self.bus.shutdown()
        servers = [s for s in (self._bootstrap, self._cluster, self._local) if s is not None]
        await asyncio.gather(*(s.stop(grace) for s in servers))
        await self.member.stop_heartbeats()
        await self.plane.close()
        await self.services.close()
        with contextlib.suppress(FileNotFoundError):
            self.config.socket.unlink()
        with contextlib.suppress(errors.MicrostackError):
            self.runner.flush()
        self.store.close()

    async def wait(self) -> None:
        assert self._local is not None
        await self._local.wait_for_termination()
