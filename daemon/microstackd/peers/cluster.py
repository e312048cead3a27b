"""Cluster calls to other members over mutual TLS, pinned to the cluster CA:
a member to its control (``ControlClient``), the control to a member's
agent (``AgentClient``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc import aio

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd import errors
from microstackd.model import (
    AgentStep,
    ClusterRecord,
    EventRecord,
    NodeCredentials,
    NodeRecord,
    ServiceRecord,
    Software,
)
from microstackd.peers.beats import DatagramSession
from microstackd.peers.errors import error_from_rpc
from microstackd.trust import beat, names
from microstackd.trust.x509 import CONTROL_SERVER_NAME
from microstackd.wire import convert
from microstackd.wire.options import CHANNEL_OPTIONS


def member_channel(host: str, port: int, creds: NodeCredentials, server_name: str) -> aio.Channel:
    """An mTLS channel to a member named ``server_name``, pinned to the cluster CA."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=creds.ca_pem,
        private_key=creds.key_pem,
        certificate_chain=creds.cert_pem,
    )
    return aio.secure_channel(
        names.format_host_port(host, port),
        credentials,
        options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", server_name)],
    )


class ControlClient:
    """Cluster calls from a member to its control node."""

    def __init__(self, cluster: ClusterRecord, creds: NodeCredentials) -> None:
        self._where = names.format_host_port(cluster.control_address, cluster.cluster_port)
        # Pinned by the name only a control certificate carries (trust.x509,
        # rule 2), not by the control's node name, which a member could ask for.
        self._channel = member_channel(
            cluster.control_address, cluster.cluster_port, creds, CONTROL_SERVER_NAME
        )
        self._stub = pb_grpc.ClusterServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    def _error(self, exc: aio.AioRpcError) -> errors.MicrostackError:
        def unreachable(details: str) -> errors.MicrostackError:
            return errors.ControlUnreachable(
                f"cannot reach the control node at {self._where}: {details}"
            )

        return error_from_rpc(exc, unreachable)

    async def enrol(self, after_seq: int | None = None) -> AsyncIterator[EventRecord]:
        request = pb.EnrolRequest() if after_seq is None else pb.EnrolRequest(after_seq=after_seq)
        try:
            async for response in self._stub.Enrol(request):
                yield convert.event_from_pb(response.event)
        except aio.AioRpcError as exc:
            raise self._error(exc) from exc

    async def heartbeat(
        self, services: list[ServiceRecord], software: Software, timeout: float = 10.0
    ) -> int:
        return (await self._heartbeat(services, software, False, timeout))[0]

    async def heartbeat_session(
        self, services: list[ServiceRecord], software: Software, timeout: float = 10.0
    ) -> tuple[int, DatagramSession | None]:
        """A heartbeat that asks for a datagram session: (the interval, the
        session, or None when the control offers none)."""
        return await self._heartbeat(services, software, True, timeout)

    async def _heartbeat(
        self, services: list[ServiceRecord], software: Software, datagrams: bool, timeout: float
    ) -> tuple[int, DatagramSession | None]:
        request = pb.HeartbeatRequest(
            services=convert.services_to_pb(services),
            microstackd_version=software.version,
            api_version=software.api,
            want_datagram_key=datagrams,
        )
        try:
            response = await self._stub.Heartbeat(request, timeout=timeout)
        except aio.AioRpcError as exc:
            raise self._error(exc) from exc
        session = None
        if datagrams and response.datagram_port and len(response.datagram_key) == beat.KEY_BYTES:
            session = DatagramSession(
                key_id=int(response.datagram_key_id),
                key=bytes(response.datagram_key),
                port=int(response.datagram_port),
                seconds=float(response.datagram_key_seconds),
            )
        return int(response.interval_seconds), session

    def heartbeats(self, software: Software) -> HeartbeatStream:
        """A heartbeat stream to the control (``ClusterService.Heartbeats``);
        every beat declares ``software``."""
        return HeartbeatStream(self._stub.Heartbeats(), self._error, software)

    async def renew_certificate(self, csr_pem: bytes, timeout: float = 30.0) -> tuple[bytes, bytes]:
        """A new certificate for the key ``csr_pem`` proves, and the trust bundle."""
        try:
            response = await self._stub.RenewCertificate(
                pb.RenewCertificateRequest(csr_pem=csr_pem), timeout=timeout
            )
        except aio.AioRpcError as exc:
            raise self._error(exc) from exc
        return bytes(response.certificate_pem), bytes(response.ca_certificates_pem)

    async def status(self, timeout: float = 10.0) -> tuple[ClusterRecord, list[NodeRecord]]:
        try:
            response = await self._stub.GetClusterStatus(
                pb.GetClusterStatusRequest(), timeout=timeout
            )
        except aio.AioRpcError as exc:
            raise self._error(exc) from exc
        return (
            convert.cluster_from_pb(response.cluster),
            [convert.node_from_pb(n) for n in response.nodes],
        )


class HeartbeatStream:
    """One member's heartbeats on one call: ``beat`` sends one; ``interval``
    is what the control last asked for (it answers the first beat, then only
    when that changes); ``ended`` completes with the error that ended the
    stream (``PermissionDenied``: this node was removed), and
    ``unimplemented`` says a control only takes ``Heartbeat`` calls."""

    def __init__(
        self,
        call: Any,
        error: Callable[[aio.AioRpcError], errors.MicrostackError],
        software: Software,
    ) -> None:
        self._call = call
        self._error = error
        self._software = software
        self.interval = 0
        #: The control does not serve the stream (an older microstackd).
        self.unimplemented = False
        self.answered = asyncio.Event()
        self.ended: asyncio.Future[errors.MicrostackError] = (
            asyncio.get_running_loop().create_future()
        )
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while (response := await self._call.read()) is not aio.EOF:
                self.interval = int(response.interval_seconds)
                self.answered.set()
            ended: errors.MicrostackError = errors.ControlUnreachable(
                "the control ended the heartbeat stream"
            )
        except aio.AioRpcError as exc:
            self.unimplemented = exc.code() is grpc.StatusCode.UNIMPLEMENTED
            ended = self._error(exc)
        except asyncio.CancelledError:
            ended = errors.ControlUnreachable("the heartbeat stream was closed")
        if not self.ended.done():
            self.ended.set_result(ended)
        self.answered.set()

    async def beat(self, services: list[ServiceRecord]) -> None:
        request = pb.HeartbeatsRequest(
            services=convert.services_to_pb(services),
            microstackd_version=self._software.version,
            api_version=self._software.api,
        )
        try:
            await self._call.write(request)
        except (aio.AioRpcError, aio.UsageError, asyncio.InvalidStateError):
            # The call is over: ``ended`` says why (the reader sees it too).
            await asyncio.wait({self._reader}, timeout=5)

    async def close(self) -> None:
        self._call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class AgentClient:
    """Control-to-node calls to a member's agent, with the control's identity."""

    def __init__(self, node: NodeRecord, creds: NodeCredentials) -> None:
        self._node = node.name
        self._where = names.format_host_port(node.address, node.agent_port)
        self._channel = member_channel(node.address, node.agent_port, creds, node.name)
        self._stub = pb_grpc.AgentServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    def _error(self, exc: aio.AioRpcError) -> errors.MicrostackError:
        def unreachable(details: str) -> errors.MicrostackError:
            return errors.NodeUnreachable(
                f"cannot reach the agent of {self._node} at {self._where}: {details}"
            )

        return error_from_rpc(
            exc, unreachable, default=errors.EnrolmentFailed, prefix=f"{self._node}: "
        )

    async def apply_role(self, role: str, settings: dict[str, str]) -> AsyncIterator[AgentStep]:
        request = pb.ApplyRoleRequest(role=role, settings=settings)
        try:
            async for response in self._stub.ApplyRole(request):
                yield convert.agent_step_from_pb(response)
        except aio.AioRpcError as exc:
            raise self._error(exc) from exc

    async def _services_call(
        self, method: Any, request: Any, timeout: float
    ) -> list[ServiceRecord]:
        """A unary agent call whose answer is the role's services."""
        try:
            response = await method(request, timeout=timeout)
        except aio.AioRpcError as exc:
            raise self._error(exc) from exc
        return convert.services_from_pb(response.services)

    async def services(self, timeout: float = 10.0) -> list[ServiceRecord]:
        return await self._services_call(self._stub.GetServices, pb.GetServicesRequest(), timeout)

    async def trust_ca(self, bundle: bytes, renew: bool, timeout: float = 60.0) -> str:
        """Have the node trust ``bundle`` (and renew under its first CA); its serial now."""
        request = pb.TrustCARequest(ca_certificates_pem=bundle, renew=renew)
        try:
            response = await self._stub.TrustCA(request, timeout=timeout)
        except aio.AioRpcError as exc:
            raise self._error(exc) from exc
        return str(response.cert_serial)

    async def update_revocations(self, crl_pem: bytes, timeout: float = 60.0) -> str:
        try:
            response = await self._stub.UpdateRevocations(
                pb.UpdateRevocationsRequest(crl_pem=crl_pem), timeout=timeout
            )
        except aio.AioRpcError as exc:
            raise self._error(exc) from exc
        return str(response.message)

    async def leave(self, timeout: float = 60.0) -> list[ServiceRecord]:
        return await self._services_call(self._stub.Leave, pb.LeaveRequest(), timeout)
