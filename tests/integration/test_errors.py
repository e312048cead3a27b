"""Errors reach callers mapped and worded (issue 14, item 8): a corrupt
verifier.json is a clear INTERNAL to the joiner, a non-protobuf payload is
refused without an error-level traceback, a refused streaming method is
UNIMPLEMENTED at once, an invalid key file is named as such, and a failed
start prints no grpc ``Server.__del__`` traceback."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from microstack_api.v1 import cluster_pb2 as pb
from microstackd.model import NodeCredentials
from microstackd.peers.bootstrap import fetch_bootstrap_certificate
from microstackd.peers.cluster import member_channel
from microstackd.trust import x509
from sandbox.launcher import NotReady, tool
from tests.integration.harness import Node
from tests.integration.test_adversarial import HELLO, _raw_exchange


def _log_after(node: Node, mark: int) -> str:
    return node.log.read_text()[mark:]


def test_a_corrupt_verifier_is_a_clear_internal_error_for_the_joiner(control: Node) -> None:
    control.stop()
    (control.state_dir / "verifier.json").write_text("{not json")
    control.start()
    mark = len(control.log.read_text())
    code, details = asyncio.run(_raw_exchange(control, [HELLO]))
    assert code is grpc.StatusCode.INTERNAL, (code, details)
    assert "Expecting" not in details and "JSON" not in details, details
    assert "control node" in details and "restore" in details, details
    log = _log_after(control, mark)
    assert "verifier.json" in log and "level=error" in log, log
    assert "Traceback" not in log, log


def test_a_non_protobuf_payload_is_refused_without_an_error_traceback(control: Node) -> None:
    mark = len(control.log.read_text())

    async def garbage() -> grpc.StatusCode:
        cert = await fetch_bootstrap_certificate(control.address, control.port)
        creds = grpc.ssl_channel_credentials(root_certificates=cert)
        options = [("grpc.ssl_target_name_override", x509.BOOTSTRAP_SERVER_NAME)]
        async with aio.secure_channel(control.endpoint, creds, options=options) as channel:
            call = channel.stream_stream("/microstack.cluster.v1.BootstrapService/Exchange")(
                iter([b"\xff\xff\xff\xff not a protobuf"]), timeout=10
            )
            try:
                async for _ in call:
                    pass
            except aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    assert asyncio.run(garbage()) is grpc.StatusCode.INVALID_ARGUMENT
    time.sleep(0.5)
    log = _log_after(control, mark)
    assert "level=error" not in log, log
    assert "Traceback" not in log and "DecodeError" not in log, log
    assert control.status()["cluster"]  # still serving


def _streaming_methods() -> list[tuple[str, bool]]:
    return [
        (f"/{service.full_name}/{method.name}", method.client_streaming)
        for f in (pb, health_pb2, reflection_pb2)
        for service in f.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if method.client_streaming or method.server_streaming
    ]


#: Streaming methods served on each endpoint (the rest must be refused).
SERVED = {
    "socket": {
        "Init",
        "Join",
        "AdminService/Watch",
        "Launch",
        "RotateCA",
        "Drain",
        "Backup",
        "Restore",
        "Reconfigure",
        "RotateSecrets",
        "Health/Watch",
        "ServerReflectionInfo",
    },
    "bootstrap": {"Exchange", "Health/Watch"},
    "cluster": {"Enrol", "Heartbeats", "ApplyRole", "Health/Watch"},
}


def _served(where: str, path: str) -> bool:
    return any(path.endswith(("/" + m, "." + m)) for m in SERVED[where])


def test_a_refused_streaming_method_is_unimplemented_at_once(control: Node) -> None:
    """Called with a request stream left open (nothing sent, no half-close):
    a refusal must not wait for a request that never comes, until the
    deadline. (The access interceptor before the rooms refused with a unary
    handler, which did: Exchange on the socket and reflection on the
    bootstrap port hung until the deadline.)"""
    key, cert, ca = (control.state_dir / "tls" / n for n in ("node.key", "node.crt", "ca.crt"))
    creds = NodeCredentials(key.read_bytes(), cert.read_bytes(), ca.read_bytes())

    async def calls() -> dict[tuple[str, str], tuple[str, float]]:
        cert_pem = await fetch_bootstrap_certificate(control.address, control.port)
        options = [("grpc.ssl_target_name_override", x509.BOOTSTRAP_SERVER_NAME)]
        channels = {
            "socket": aio.insecure_channel(f"unix:{control.socket}"),
            "bootstrap": aio.secure_channel(
                control.endpoint, grpc.ssl_channel_credentials(cert_pem), options=options
            ),
            "cluster": member_channel(control.address, control.cluster_port, creds, "ctl"),
        }
        seen = {}
        try:
            for where, channel in channels.items():
                for path, client_streaming in _streaming_methods():
                    if _served(where, path):
                        continue

                    async def open_stream() -> AsyncIterator[bytes]:
                        await asyncio.sleep(60)  # no request, no half-close
                        yield b""

                    started = time.monotonic()
                    try:
                        if client_streaming:
                            call = channel.stream_stream(path)(open_stream(), timeout=10)
                        else:
                            call = channel.unary_stream(path)(b"", timeout=10)
                        async for _ in call:
                            break
                        code = "OK"
                    except aio.AioRpcError as exc:
                        code = exc.code().name
                    seen[(where, path)] = (code, time.monotonic() - started)
        finally:
            for channel in channels.values():
                await channel.close(None)
        return seen

    seen = asyncio.run(calls())
    assert seen
    wrong = {k: v for k, v in seen.items() if v[0] != "UNIMPLEMENTED" or v[1] > 2.0}
    assert not wrong, wrong


def _start_fails(node: Node) -> str:
    with pytest.raises(NotReady) as failed:
        node.start()
    return failed.value.log


@pytest.mark.parametrize("key", ["node.key", "bootstrap.key"])
def test_an_invalid_key_file_is_named_and_the_failed_start_is_clean(
    control: Node, key: str
) -> None:
    control.stop()
    (control.state_dir / "tls" / key).write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n")
    log = _start_fails(control)
    assert f"tls/{key}" in log and "not a valid" in log, log
    assert "address in use" not in log, log
    assert "__del__" not in log and "Traceback" not in log, log


def test_a_failed_start_prints_no_grpc_tracebacks(tmp_path: Path) -> None:
    """An address that is not this host's: one line saying so, nothing else."""
    result = subprocess.run(
        [tool("microstackd"), "--state-dir", str(tmp_path / "s"), "--socket",
         str(tmp_path / "s.sock"), "--listen", "192.0.2.1:0", "--node-name", "n1",
         "--config-root", str(tmp_path / "etc"), "--service-manager", "process"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "192.0.2.1 is not an address of this host" in result.stderr, result.stderr
    assert "__del__" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "s.sock").exists()
