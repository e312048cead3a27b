"""``ClusterService`` on the control's mTLS port: members' calls to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd.api.servicers import Context, caller
from microstackd.control.beats import Beats
from microstackd.control.certs import Certificates
from microstackd.control.enrol import Enrolments
from microstackd.control.members import Members
from microstackd.control.rotation import Rotation
from microstackd.enrolment.events import EventBus
from microstackd.model import Software
from microstackd.wire import convert


class ClusterServicer(pb_grpc.ClusterServiceServicer):
    def __init__(
        self,
        enrolments: Enrolments,
        members: Members,
        bus: EventBus,
        certificates: Certificates,
        rotation: Rotation,
        beats: Beats,
    ) -> None:
        self._enrolments = enrolments
        self._members = members
        self._bus = bus
        self._certificates = certificates
        self._rotation = rotation
        self._beats = beats
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
        identity = caller()
        software = Software(request.microstackd_version, request.api_version)
        interval = self._members.heartbeat(identity, services, software)
        self._rotation.noticed(identity)  # a member back during a CA rotation moves now
        response = pb.HeartbeatResponse(interval_seconds=interval)
        session = self._beats.issue(identity) if request.want_datagram_key else None
        if session is not None:
            key_id, key, seconds = session
            response.datagram_key = key
            response.datagram_key_id = key_id
            response.datagram_port = self._beats.port
            response.datagram_key_seconds = int(seconds)
        return response

    async def Heartbeats(
        self, request_iterator: AsyncIterator[pb.HeartbeatsRequest], context: Context
    ) -> AsyncIterator[pb.HeartbeatsResponse]:
        identity = caller()
        told = 0
        last = b""
        self._members.open_stream(identity)
        try:
            async for request in request_iterator:
                # A beat the same as the last one of this stream (services and
                # version) was taken then: it is not looked at again.
                raw = request.SerializeToString()
                if raw == last:
                    interval = self._members.beat(identity, None)
                else:
                    services = convert.services_from_pb(request.services)
                    software = Software(request.microstackd_version, request.api_version)
                    interval = self._members.beat(identity, services, software)
                    last = raw
                self._rotation.noticed(identity)  # a member back during a CA rotation moves now
                if interval != told:
                    told = interval
                    yield pb.HeartbeatsResponse(interval_seconds=interval)
        except asyncio.CancelledError:
            error = self._members.ended_by()
            if error is None:
                raise
            # Ended by the control (the certificate revoked, the control
            # stopping): the caller is told why.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            raise error from None
        finally:
            self._members.close_stream(identity)

    async def GetClusterStatus(
        self, request: pb.GetClusterStatusRequest, context: Context
    ) -> convert.Encoded:
        cluster, nodes = self._members.status()
        response = pb.GetClusterStatusResponse(cluster=convert.cluster_to_pb(cluster))
        return convert.Encoded(response, self._nodes.encode(nodes))

    async def RenewCertificate(
        self, request: pb.RenewCertificateRequest, context: Context
    ) -> pb.RenewCertificateResponse:
        cert_pem, bundle = self._certificates.renew_member(caller(), bytes(request.csr_pem))
        return pb.RenewCertificateResponse(certificate_pem=cert_pem, ca_certificates_pem=bundle)
