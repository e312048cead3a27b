"""Calls from this daemon to a peer daemon: the bootstrap exchange over
pinned TLS, and cluster calls over mTLS. gRPC failures become domain errors
here, so callers above never see a gRPC status.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd import errors, security, validate
from microstackd.credentials import NodeCredentials
from microstackd.model import ClusterRecord, EventRecord, NodeRecord, ServiceRecord, StepState
from microstackd.rpc import convert
from microstackd.rpc.options import CHANNEL_OPTIONS

_ERRORS: dict[grpc.StatusCode, type[errors.MicrostackError]] = {
    grpc.StatusCode.UNAUTHENTICATED: errors.WrongPassword,
    grpc.StatusCode.ABORTED: errors.EnrolmentFailed,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.ALREADY_EXISTS: errors.NameTaken,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: errors.NotControl,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.TooManyAttempts,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.UNAVAILABLE: errors.ControlUnreachable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.ControlUnreachable,
}


def error_from_rpc(exc: aio.AioRpcError, where: str) -> errors.MicrostackError:
    cls = _ERRORS.get(exc.code(), errors.MicrostackError)
    details = exc.details() or exc.code().name
    if cls is errors.ControlUnreachable:
        return cls(f"cannot reach the control node at {where}: {details}")
    return cls(details)


async def fetch_bootstrap_certificate(host: str, port: int, timeout: float = 5.0) -> bytes:
    """The certificate the control's bootstrap port presents, as PEM."""
    where = validate.format_host_port(host, port)
    try:
        pem = await asyncio.to_thread(ssl.get_server_certificate, (host, port), timeout=timeout)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise errors.ControlUnreachable(
            f"cannot reach the control node at {where}: {reason or type(exc).__name__}"
        ) from exc
    return pem.encode()


@dataclass(frozen=True)
class Challenge:
    cluster_id: str
    kdf: security.KdfParams
    pake_message: bytes


class BootstrapCall:
    """One bootstrap exchange with a control whose certificate is pinned."""

    def __init__(self, host: str, port: int, certificate_pem: bytes, timeout: float = 30.0) -> None:
        self._where = validate.format_host_port(host, port)
        credentials = grpc.ssl_channel_credentials(root_certificates=certificate_pem)
        self._channel = aio.secure_channel(
            self._where,
            credentials,
            options=[
                *CHANNEL_OPTIONS,
                ("grpc.ssl_target_name_override", security.BOOTSTRAP_SERVER_NAME),
            ],
        )
        self._call = pb_grpc.BootstrapServiceStub(self._channel).Exchange(timeout=timeout)

    async def __aenter__(self) -> BootstrapCall:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._call.cancel()
        await self._channel.close(None)

    async def _read(self) -> pb.ExchangeResponse:
        try:
            response = await self._call.read()
        except aio.AioRpcError as exc:
            raise error_from_rpc(exc, self._where) from exc
        if response is aio.EOF:
            code = await self._call.code()
            details = await self._call.details()
            raise errors.BootstrapProtocolError(f"the control ended the exchange: {code} {details}")
        assert isinstance(response, pb.ExchangeResponse)
        return response

    async def _write(self, request: pb.ExchangeRequest) -> None:
        try:
            await self._call.write(request)
        except aio.AioRpcError as exc:
            raise error_from_rpc(exc, self._where) from exc

    async def hello(
        self, hello: security.Hello, cluster_port: int = 0, token_id: str = ""
    ) -> Challenge:
        await self._write(
            pb.ExchangeRequest(
                hello=pb.BootstrapHello(
                    version=hello.version,
                    node_name=hello.node_name,
                    address=hello.address,
                    hostname=hello.hostname,
                    cluster_port=cluster_port,
                    token_id=token_id,
                )
            )
        )
        response = await self._read()
        if response.WhichOneof("body") != "challenge":
            raise errors.BootstrapProtocolError("the control did not answer with a challenge")
        c = response.challenge
        return Challenge(
            cluster_id=c.cluster_id,
            kdf=security.KdfParams(salt=c.kdf.salt, log2_n=c.kdf.log2_n, r=c.kdf.r, p=c.kdf.p),
            pake_message=c.pake_message,
        )

    async def respond(
        self, pake_message: bytes, csr_pem: bytes, confirmation: bytes
    ) -> pb.BootstrapResult:
        await self._write(
            pb.ExchangeRequest(
                response=pb.BootstrapResponse(
                    pake_message=pake_message, csr_pem=csr_pem, confirmation=confirmation
                )
            )
        )
        response = await self._read()
        if response.WhichOneof("body") != "result":
            raise errors.BootstrapProtocolError("the control did not answer with a result")
        await self._call.done_writing()
        return response.result


def member_channel(host: str, port: int, creds: NodeCredentials, server_name: str) -> aio.Channel:
    """An mTLS channel to a member named ``server_name``, pinned to the cluster CA."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=creds.ca_pem,
        private_key=creds.key_pem,
        certificate_chain=creds.cert_pem,
    )
    return aio.secure_channel(
        validate.format_host_port(host, port),
        credentials,
        options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", server_name)],
    )


class ControlClient:
    """Cluster calls from a member to its control node."""

    def __init__(self, cluster: ClusterRecord, creds: NodeCredentials) -> None:
        self._where = validate.format_host_port(cluster.control_address, cluster.cluster_port)
        self._channel = member_channel(
            cluster.control_address, cluster.cluster_port, creds, cluster.control_name
        )
        self._stub = pb_grpc.ClusterServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def enrol(self, after_seq: int | None = None) -> AsyncIterator[EventRecord]:
        request = pb.EnrolRequest() if after_seq is None else pb.EnrolRequest(after_seq=after_seq)
        try:
            async for response in self._stub.Enrol(request):
                yield convert.event_from_pb(response.event)
        except aio.AioRpcError as exc:
            raise error_from_rpc(exc, self._where) from exc

    async def heartbeat(self, services: list[ServiceRecord], timeout: float = 10.0) -> int:
        request = pb.HeartbeatRequest(services=[convert.service_to_pb(s) for s in services])
        try:
            response = await self._stub.Heartbeat(request, timeout=timeout)
        except aio.AioRpcError as exc:
            raise error_from_rpc(exc, self._where) from exc
        return int(response.interval_seconds)

    async def status(self, timeout: float = 10.0) -> tuple[pb.ClusterInfo, list[NodeRecord]]:
        try:
            response = await self._stub.GetClusterStatus(
                pb.GetClusterStatusRequest(), timeout=timeout
            )
        except aio.AioRpcError as exc:
            raise error_from_rpc(exc, self._where) from exc
        return response.cluster, [convert.node_from_pb(n) for n in response.nodes]


@dataclass(frozen=True)
class AgentProgress:
    step: str
    state: StepState
    message: str
    percent: int
    services: tuple[ServiceRecord, ...]
    final: bool


class AgentClient:
    """Control-to-node calls to a member's agent, with the control's identity."""

    def __init__(self, node: NodeRecord, creds: NodeCredentials) -> None:
        self._node = node.name
        self._where = validate.format_host_port(node.address, node.agent_port)
        self._channel = member_channel(node.address, node.agent_port, creds, node.name)
        self._stub = pb_grpc.AgentServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    def _error(self, exc: aio.AioRpcError) -> errors.MicrostackError:
        details = exc.details() or exc.code().name
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return errors.NodeUnreachable(
                f"cannot reach the agent of {self._node} at {self._where}: {details}"
            )
        return errors.EnrolmentFailed(f"{self._node}: {details}")

    async def apply_role(self, role: str, settings: dict[str, str]) -> AsyncIterator[AgentProgress]:
        request = pb.ApplyRoleRequest(role=role, settings=settings)
        try:
            async for r in self._stub.ApplyRole(request):
                yield AgentProgress(
                    step=r.step,
                    state=convert.STATE_FROM_PB.get(r.state, StepState.PENDING),
                    message=r.message,
                    percent=r.percent,
                    services=tuple(convert.service_from_pb(s) for s in r.services),
                    final=r.final,
                )
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
        return [convert.service_from_pb(s) for s in response.services]

    async def services(self, timeout: float = 10.0) -> list[ServiceRecord]:
        return await self._services_call(self._stub.GetServices, pb.GetServicesRequest(), timeout)

    async def leave(self, timeout: float = 60.0) -> list[ServiceRecord]:
        return await self._services_call(self._stub.Leave, pb.LeaveRequest(), timeout)
