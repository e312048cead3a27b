"""What a member sends is bounded (issue 14, item 5): a heartbeat too big, or
with too many services, or with fields too long, is refused, and `status`
keeps working on the control and on every compute."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd import versions
from microstackd.model import NodeCredentials
from microstackd.peers.cluster import member_channel
from microstackd.trust.x509 import CONTROL_SERVER_NAME
from tests.integration.harness import Node


def _beat(control: Node, member: Node, services: list[pb.ServiceStatus]) -> grpc.StatusCode:
    tls = member.state_dir / "tls"
    creds = NodeCredentials(
        (tls / "node.key").read_bytes(),
        (tls / "node.crt").read_bytes(),
        (tls / "ca.crt").read_bytes(),
    )

    async def call() -> grpc.StatusCode:
        channel = member_channel(control.address, control.cluster_port, creds, CONTROL_SERVER_NAME)
        try:
            await pb_grpc.ClusterServiceStub(channel).Heartbeat(
                pb.HeartbeatRequest(
                    services=services,
                    microstackd_version=versions.VERSION,
                    api_version=versions.API_VERSION,
                ),
                timeout=30,
            )
        except aio.AioRpcError as exc:
            return exc.code()
        finally:
            await channel.close()
        return grpc.StatusCode.OK

    return asyncio.run(call())


BIG = "x" * (3_900_000)


@pytest.mark.parametrize(
    "services",
    [
        [pb.ServiceStatus(name="nova-compute", state="failed", message=BIG)],
        [pb.ServiceStatus(name=f"s{i}", state="running") for i in range(5000)],
        [pb.ServiceStatus(name="n" * 5000, state="running")],
        [pb.ServiceStatus(name="nova-compute", state="r" * 5000)],
        [pb.ServiceStatus(name=f"s{i}", state="failed", message="m" * 8000) for i in range(40)],
        [pb.ServiceStatus(name="nova-compute", state="running", detail=BIG)],
        [pb.ServiceStatus(name=f"s{i}", state="running", detail="d" * 8000) for i in range(40)],
    ],
    ids=[
        "one-huge-message",
        "too-many-services",
        "long-name",
        "unknown-state",
        "too-much-text",
        "one-huge-detail",
        "too-much-detail",
    ],
)
def test_an_oversized_heartbeat_is_refused_and_status_keeps_working(
    control: Node,
    make_node: Callable[..., Node],
    password_file: Path,
    services: list[pb.ServiceStatus],
) -> None:
    member = make_node("node-1")
    member.join(control, password_file)
    assert _beat(control, member, services) is grpc.StatusCode.INVALID_ARGUMENT
    assert [n["name"] for n in control.status()["nodes"]] == ["ctl", "node-1"]
    assert member.status()["nodes"][1]["name"] == "node-1"
    # A heartbeat within the bounds is still taken.
    ok = [pb.ServiceStatus(name="nova-compute", state="failed", message="m" * 6000)]
    assert _beat(control, member, ok) is grpc.StatusCode.OK
    shown = control.status()["nodes"][1]["services"]
    assert shown == [
        {"name": "nova-compute", "state": "failed", "message": "m" * 6000, "detail": ""}
    ]
