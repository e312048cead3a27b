"""``ClusterService`` on the control's mTLS port: members' calls to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd.api.servicers import Context, caller
from microstackd.control.enrol import Enrolments
from microstackd.control.members import Members
from microstackd.enrolment.events import EventBus
from microstackd.wire import convert


class ClusterServicer(pb_grpc.ClusterServiceServicer):
    def __init__(self, enrolments: Enrolments, members: Members, bus: EventBus) -> None:
        self._enrolments = enrolments
        self._members = members
        self._bus = bus
        self._nodes = convert.NodesEncoder(pb.GetClusterStatusResponse.NODES_FIELD_NUMBER)

    async def Enrol(
        self, request: pb.EnrolRequest, context: Context
    ) -> AsyncIterator[pb.EnrolResponse]:
        identity = caller()
        after_seq = request.after_seq if request.HasField("after_seq") else None
        after = self._enrolments.enrol(identity, after_seq)
        async for event in self._bus.follow(identity.name, after):
            yield pb.EnrolResponse(event=convert.event_to_pb(event))

    async def Heartbeat(
        self, request: pb.HeartbeatRequest, context: Context
    ) -> pb.HeartbeatResponse:
        services = convert.services_from_pb(request.services)
        interval = self._members.heartbeat(caller(), services)
        return pb.HeartbeatResponse(interval_seconds=interval)

    async def Heartbeats(
        self, request_iterator: AsyncIterator[pb.HeartbeatsRequest], context: Context
    ) -> AsyncIterator[pb.HeartbeatsResponse]:
        identity = caller()
        told = 0
        last = b""
        async for request in request_iterator:
            # Services as on the last beat of this stream: not looked at again.
            raw = request.SerializeToString()
            services = None if raw == last else convert.services_from_pb(request.services)
            last = raw
            interval = self._members.beat(identity, services)
            if interval != told:
                told = interval
                yield pb.HeartbeatsResponse(interval_seconds=interval)

    async def GetClusterStatus(
        self, request: pb.GetClusterStatusRequest, context: Context
    ) -> pb.GetClusterStatusResponse:
        cluster, nodes = self._members.status()
        response = pb.GetClusterStatusResponse(cluster=convert.cluster_to_pb(cluster))
        response.MergeFromString(self._nodes.encode(nodes))
        return response
