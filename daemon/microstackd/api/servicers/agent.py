"""``AgentService`` on every member's mTLS port: the control's calls to the
node's agent. ``StopRole`` is deprecated and not served (``api/access.py``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd.api.servicers import Context, caller
from microstackd.member.join import Member
from microstackd.member.renewal import Renewal
from microstackd.node.agent import Agent
from microstackd.wire import convert

log = logging.getLogger(__name__)


class AgentServicer(pb_grpc.AgentServiceServicer):
    def __init__(self, agent: Agent, member: Member, renewal: Renewal) -> None:
        self._agent = agent
        self._member = member
        self._renewal = renewal

    async def ApplyRole(
        self, request: pb.ApplyRoleRequest, context: Context
    ) -> AsyncIterator[pb.ApplyRoleResponse]:
        log.info("applying role role=%s caller=%s", request.role, caller().name)
        async for step in self._agent.apply_role(request.role, dict(request.settings)):
            yield convert.agent_step_to_pb(step)

    async def GetServices(
        self, request: pb.GetServicesRequest, context: Context
    ) -> pb.GetServicesResponse:
        return pb.GetServicesResponse(services=convert.services_to_pb(await self._agent.services()))

    async def UpdateRevocations(
        self, request: pb.UpdateRevocationsRequest, context: Context
    ) -> pb.UpdateRevocationsResponse:
        message = await self._agent.update_revocations(request.crl_pem)
        return pb.UpdateRevocationsResponse(message=message)

    async def Leave(self, request: pb.LeaveRequest, context: Context) -> pb.LeaveResponse:
        """This node was removed: stop its services and forget the cluster."""
        log.info("removed from the cluster; stopping services caller=%s", caller().name)
        stopped = await self._agent.stop_role()
        await self._member.leave()
        return pb.LeaveResponse(services=convert.services_to_pb(stopped))

    async def TrustCA(self, request: pb.TrustCARequest, context: Context) -> pb.TrustCAResponse:
        """A CA rotation: trust these CAs, and renew under the first when asked."""
        log.info("trusting CAs renew=%s caller=%s", request.renew, caller().name)
        serial = await self._renewal.trust(bytes(request.ca_certificates_pem), request.renew)
        return pb.TrustCAResponse(cert_serial=serial)
