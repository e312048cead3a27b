"""microstackd as a system service: health, reflection, graceful shutdown,
configuration reload."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd.peers.bootstrap import fetch_bootstrap_certificate
from microstackd.peers.cluster import member_channel
from microstackd.store import Store
from microstackd.trust import x509
from tests.integration.harness import Node

SERVING = health_pb2.HealthCheckResponse.SERVING


async def _health(channel: aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return int(response.status)


def test_health_on_every_endpoint(control: Node) -> None:
    async def check() -> list[int]:
        statuses = []
        async with aio.insecure_channel(f"unix:{control.socket}") as channel:
            statuses.append(await _health(channel))
        cert = await fetch_bootstrap_certificate(control.address, control.port)
        tls = grpc.ssl_channel_credentials(root_certificates=cert)
        options = [("grpc.ssl_target_name_override", x509.BOOTSTRAP_SERVER_NAME)]
        async with aio.secure_channel(control.endpoint, tls, options=options) as channel:
            statuses.append(await _health(channel))
        creds = Store(control.state_dir).credentials()
        channel = member_channel(control.address, control.cluster_port, creds, "ctl")
        try:
            statuses.append(await _health(channel))
        finally:
            await channel.close(None)
        return statuses

    assert asyncio.run(check()) == [SERVING] * 3


def test_reflection_on_the_socket_only(control: Node) -> None:
    async def services(channel: aio.Channel) -> list[str]:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in stub.ServerReflectionInfo(iter([request]), timeout=5):
            return [s.name for s in response.list_services_response.service]
        return []

    async def both() -> tuple[list[str], grpc.StatusCode]:
        async with aio.insecure_channel(f"unix:{control.socket}") as channel:
            local = await services(channel)
        cert = await fetch_bootstrap_certificate(control.address, control.port)
        tls = grpc.ssl_channel_credentials(root_certificates=cert)
        options = [("grpc.ssl_target_name_override", x509.BOOTSTRAP_SERVER_NAME)]
        async with aio.secure_channel(control.endpoint, tls, options=options) as channel:
            # Open the stream without writing: the server answers from the
            # method name alone, and a write racing its refusal would fail
            # on the client with INTERNAL instead of the server's status.
            call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(timeout=5)
            code = await call.code()
        return local, code

    local, remote = asyncio.run(both())
    assert "microstack.cluster.v1.AdminService" in local
    assert "grpc.health.v1.Health" in local
    assert remote is grpc.StatusCode.UNIMPLEMENTED


def test_sigterm_ends_live_streams_clearly_and_keeps_the_state(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    compute = make_node("node-1")
    compute.join(control, password_file)
    before = control.status()

    async def watch_through_shutdown() -> tuple[grpc.StatusCode, str, str]:
        async with aio.insecure_channel(f"unix:{control.socket}") as channel:
            stub = pb_grpc.AdminServiceStub(channel)
            # A live stream: node-1's events after its last one (none yet).
            call = stub.Watch(pb.WatchRequest(node="node-1", after_seq=10_000))
            await asyncio.sleep(0.5)
            assert control.proc is not None
            control.proc.send_signal(signal.SIGTERM)
            try:
                async for _ in call:
                    pass
            except aio.AioRpcError as exc:
                metadata = dict(exc.trailing_metadata() or ())
                return exc.code(), exc.details() or "", metadata.get("microstackd-error", "")
        return grpc.StatusCode.OK, "", ""

    code, details, error = asyncio.run(watch_through_shutdown())
    assert code is grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in details and error == "ShuttingDown"
    assert control.proc is not None and control.proc.wait(15) == 0
    assert not control.socket.exists()
    assert (
        not (control.state_dir / "microstackd.db-wal").exists()
        or (control.state_dir / "microstackd.db-wal").stat().st_size == 0
    )
    control.start()
    # One status, read once: a heartbeat between two reads changes its nodes.
    after = control.status()
    assert after == before | {"nodes": after["nodes"]}
    assert [n["name"] for n in after["nodes"]] == [n["name"] for n in before["nodes"]]


def test_sighup_reloads_the_log_level_and_names_what_needs_a_restart(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    config = tmp_path / "microstackd.yaml"
    config.write_text("log_level: info\n")
    node = make_node("solo", "--config", str(config))
    config.write_text("log_level: debug\nunreachable_after: 5\n")
    assert node.proc is not None
    node.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "configuration reloaded" not in node.log.read_text():
        assert time.monotonic() < deadline, node.log.read_text()
        time.sleep(0.1)
    line = next(x for x in node.log.read_text().splitlines() if "configuration reloaded" in x)
    assert "log_level=debug" in line and "needs_restart=unreachable_after" in line
    config.write_text("log_level: [not, a, level\n")
    node.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reload failed" not in node.log.read_text():
        assert time.monotonic() < deadline, node.log.read_text()
        time.sleep(0.1)
    assert node.ctl("status").returncode == 0  # still serving
