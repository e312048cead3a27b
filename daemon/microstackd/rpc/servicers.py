"""Thin adapters from RPCs to the domain modules. No identity checks here
(rpc/auth.py did them) and no error mapping (rpc/auth.py does it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd import errors, security, validate
from microstackd.model import EventRecord, Role
from microstackd.node.services import ServiceStatus
from microstackd.rpc import convert
from microstackd.rpc.auth import CALLER

if TYPE_CHECKING:
    from microstackd.daemon import Daemon

log = logging.getLogger(__name__)

Context: TypeAlias = Any  # grpc.aio.ServicerContext; grpc ships no types


def _caller() -> security.Identity:
    identity = CALLER.get()
    if identity is None:  # the access table guarantees a caller here
        raise errors.PermissionDenied("no verified caller")
    return identity


def _source(context: Context) -> str:
    """The caller's IP address from gRPC's peer string (ipv4:1.2.3.4:5, ipv6:[::1]:5)."""
    peer = str(context.peer())
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.index("]")]
    return rest.rpartition(":")[0] or peer


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    async def Init(
        self, request: pb.InitRequest, context: Context
    ) -> AsyncIterator[pb.InitResponse]:
        if request.role != pb.ROLE_CONTROL:
            raise errors.InvalidArgument(
                "init creates a cluster with this node as its control node (role control); "
                "a compute node joins with `microstackctl join`"
            )
        control = self._daemon.control
        node = self._daemon.config.node_name
        after = control.init(request.password, request.address)
        async for event in self._daemon.bus.follow(node, after):
            yield pb.InitResponse(event=convert.event_to_pb(event))

    async def Join(
        self, request: pb.JoinRequest, context: Context
    ) -> AsyncIterator[pb.JoinResponse]:
        events = self._daemon.member.join(
            request.control,
            request.password,
            request.address,
            request.token,
            float(request.timeout_seconds),
        )
        async for event in events:
            yield pb.JoinResponse(event=convert.event_to_pb(event))

    async def Watch(
        self, request: pb.WatchRequest, context: Context
    ) -> AsyncIterator[pb.WatchResponse]:
        daemon = self._daemon
        cluster = daemon.store.cluster()
        if cluster is None:
            raise errors.NotInitialised()
        node = request.node or daemon.config.node_name
        validate.node_name(node, "node")
        events: AsyncIterator[EventRecord]
        if cluster.role is Role.CONTROL:
            if daemon.store.node(node) is None:
                raise errors.NotFound(f"no node named {node!r} in the cluster")
            events = daemon.bus.follow(node, request.after_seq)
        elif node != daemon.config.node_name:
            raise errors.InvalidArgument(
                f"a compute node can only watch itself; watch {node} on the control node"
            )
        else:
            events = daemon.member.follow(request.after_seq)
        async for event in events:
            yield pb.WatchResponse(event=convert.event_to_pb(event))

    async def RemoveNode(
        self, request: pb.RemoveNodeRequest, context: Context
    ) -> pb.RemoveNodeResponse:
        node, message = await self._daemon.control.remove(request.name, request.force)
        return pb.RemoveNodeResponse(node=convert.node_to_pb(node), message=message)

    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: Context
    ) -> pb.CreateTokenResponse:
        text, record = self._daemon.control.create_token(request.name, request.ttl_seconds or 3600)
        return pb.CreateTokenResponse(
            token=text, expires=convert.timestamp(record.expires), id=record.id
        )

    async def ListTokens(
        self, request: pb.ListTokensRequest, context: Context
    ) -> pb.ListTokensResponse:
        return pb.ListTokensResponse(
            tokens=[convert.token_to_pb(t) for t in self._daemon.control.list_tokens()]
        )

    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: Context
    ) -> pb.RevokeTokenResponse:
        token = self._daemon.control.revoke_token(request.id_or_name)
        return pb.RevokeTokenResponse(token=convert.token_to_pb(token))

    async def Status(self, request: pb.StatusRequest, context: Context) -> pb.StatusResponse:
        daemon = self._daemon
        cluster = daemon.store.cluster()
        response = pb.StatusResponse(
            local_node=daemon.config.node_name,
            local_role=convert.ROLE_TO_PB[cluster.role if cluster else Role.NONE],
        )
        if cluster is None:
            return response
        nova: dict[str, dict[str, Any]] = {}
        if cluster.role is Role.CONTROL:
            record, nodes = daemon.control.status()
            response.cluster.CopyFrom(convert.cluster_to_pb(record))
            nova = await daemon.control.nova_view()
        else:
            info, nodes = await daemon.member.status()
            response.cluster.CopyFrom(info)
        for n in nodes:
            message = convert.node_to_pb(n)
            if n.role is Role.COMPUTE and n.name in nova:
                message.nova.CopyFrom(convert.nova_host_to_pb(nova[n.name]))
            response.nodes.append(message)
        return response

    async def Launch(
        self, request: pb.LaunchRequest, context: Context
    ) -> AsyncIterator[pb.LaunchResponse]:
        queue: asyncio.Queue[pb.LaunchResponse | None] = asyncio.Queue()
        node = self._daemon.config.node_name

        def event(message: str, state: Any, final: bool = False) -> pb.Event:
            return pb.Event(node=node, step="launch", state=state, message=message, final=final)

        async def progress(message: str, waiting: bool) -> None:
            state = pb.STEP_STATE_WAITING if waiting else pb.STEP_STATE_RUNNING
            await queue.put(pb.LaunchResponse(event=event(message, state)))

        fields = {
            "image": request.image,
            "name": request.name,
            "flavor": request.flavor,
            "availability_zone": request.availability_zone,
            "network": request.network,
            "key_name": request.key_name,
            "public_key": request.public_key,
        }

        async def run() -> dict[str, Any]:
            try:
                return await self._daemon.control.launch(fields, progress)
            finally:
                await queue.put(None)

        task = asyncio.ensure_future(run())
        try:
            while (item := await queue.get()) is not None:
                yield item
            result = await task
        finally:
            if not task.done():
                task.cancel()
        done = event(f"server {result.get('name')} is {result.get('status')}", pb.STEP_STATE_DONE)
        done.final = True
        yield pb.LaunchResponse(event=done, result=convert.launch_result_to_pb(result))


class BootstrapServicer(pb_grpc.BootstrapServiceServicer):
    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    async def Exchange(
        self, request_iterator: AsyncIterator[pb.ExchangeRequest], context: Context
    ) -> AsyncIterator[pb.ExchangeResponse]:
        requests = aiter(request_iterator)
        first = await _next(requests, "hello")
        if first.WhichOneof("body") != "hello":
            raise errors.BootstrapProtocolError("the bootstrap must start with hello")
        h = first.hello
        hello = security.Hello(
            node_name=h.node_name, address=h.address, hostname=h.hostname, version=h.version
        )
        control = self._daemon.control
        if not 0 <= h.cluster_port < 65536:
            raise errors.InvalidArgument(f"cluster port {h.cluster_port} is not a TCP port")
        session, cluster_id, kdf, pake = control.begin_bootstrap(
            hello, _source(context), h.cluster_port, h.token_id
        )
        yield pb.ExchangeResponse(
            challenge=pb.BootstrapChallenge(
                cluster_id=cluster_id,
                kdf=pb.KdfParams(name="scrypt", salt=kdf.salt, log2_n=kdf.log2_n, r=kdf.r, p=kdf.p),
                pake_message=pake,
            )
        )
        second = await _next(requests, "response")
        if second.WhichOneof("body") != "response":
            raise errors.BootstrapProtocolError("expected the PAKE response after the challenge")
        r = second.response
        result = control.finish_bootstrap(session, r.pake_message, r.csr_pem, r.confirmation)
        yield pb.ExchangeResponse(
            result=pb.BootstrapResult(
                certificate_pem=result.certificate_pem,
                ca_certificate_pem=result.ca_certificate_pem,
                control_name=result.control_name,
                cluster_port=result.cluster_port,
                confirmation=result.confirmation,
            )
        )


async def _next(requests: AsyncIterator[pb.ExchangeRequest], what: str) -> pb.ExchangeRequest:
    try:
        return await asyncio.wait_for(anext(requests), timeout=30)
    except StopAsyncIteration:
        raise errors.BootstrapProtocolError(
            f"the joiner closed the stream before its {what}"
        ) from None
    except TimeoutError:
        raise errors.BootstrapProtocolError(f"no {what} from the joiner within 30 s") from None


class ClusterServicer(pb_grpc.ClusterServiceServicer):
    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    async def Enrol(
        self, request: pb.EnrolRequest, context: Context
    ) -> AsyncIterator[pb.EnrolResponse]:
        identity = _caller()
        after_seq = request.after_seq if request.HasField("after_seq") else None
        after = self._daemon.control.enrol(identity, after_seq)
        async for event in self._daemon.bus.follow(identity.name, after):
            yield pb.EnrolResponse(event=convert.event_to_pb(event))

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: Context
    ) -> pb.HeartbeatResponse:
        services = [convert.service_from_pb(s) for s in request.services]
        interval = self._daemon.control.heartbeat(_caller(), services)
        return pb.HeartbeatResponse(interval_seconds=interval)

    async def GetClusterStatus(
        self, request: pb.GetClusterStatusRequest, context: Context
    ) -> pb.GetClusterStatusResponse:
        cluster, nodes = self._daemon.control.status()
        return pb.GetClusterStatusResponse(
            cluster=convert.cluster_to_pb(cluster), nodes=[convert.node_to_pb(n) for n in nodes]
        )


def _services_pb(services: Iterable[ServiceStatus]) -> list[pb.ServiceStatus]:
    return [
        pb.ServiceStatus(name=s.name, state=s.state, message=s.message, detail=s.detail)
        for s in services
    ]


class AgentServicer(pb_grpc.AgentServiceServicer):
    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    async def ApplyRole(
        self, request: pb.ApplyRoleRequest, context: Context
    ) -> AsyncIterator[pb.ApplyRoleResponse]:
        log.info("applying role role=%s caller=%s", request.role, _caller().name)
        async for step in self._daemon.agent.apply_role(request.role, dict(request.settings)):
            yield pb.ApplyRoleResponse(
                step=step.step,
                state=convert.STATE_TO_PB[step.state],
                message=step.message,
                percent=step.percent,
                services=_services_pb(step.services),
                final=step.final,
            )

    async def GetServices(
        self, request: pb.GetServicesRequest, context: Context
    ) -> pb.GetServicesResponse:
        return pb.GetServicesResponse(services=_services_pb(await self._daemon.agent.services()))

    async def Leave(self, request: pb.LeaveRequest, context: Context) -> pb.LeaveResponse:
        log.info("removed from the cluster; stopping services caller=%s", _caller().name)
        services = await self._daemon.leave()
        return pb.LeaveResponse(services=_services_pb(services))

    async def StopRole(self, request: pb.StopRoleRequest, context: Context) -> pb.StopRoleResponse:
        log.info("stopping role caller=%s", _caller().name)
        return pb.StopRoleResponse(services=_services_pb(await self._daemon.agent.stop_role()))
