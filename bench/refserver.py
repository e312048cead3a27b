"""The reference server: a bare grpc.aio server with one unary method, in its own process.

    python bench/refserver.py HOST DIR

Serves ``/bench.Reference/Ping`` on two ports of HOST: TLS (server
certificate only, like the bootstrap port) and mutual TLS (like the cluster
port), with ECDSA P-256 certificates from a throwaway CA and the daemon's
own server options. Writes ca.crt, client.key and client.crt to DIR, prints
``ready TLS_PORT MTLS_PORT`` and serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from microstackd.model import Role
from microstackd.trust import x509
from microstackd.wire.options import SERVER_OPTIONS

SERVER_NAME = "bench-reference"


async def _ping(request: bytes, context: Any) -> bytes:
    return request


async def serve(host: str, out: Path) -> None:
    now = datetime.now(UTC)
    ca = x509.create_ca("bench-reference", now)

    def issue(name: str, role: Role) -> tuple[bytes, bytes]:
        key = x509.generate_key()
        cert = x509.issue_certificate(
            ca, key.public_key(), node_name=name, role=role, address=host, hostname=name, now=now
        )
        return x509.key_to_pem(key), x509.cert_to_pem(cert)

    server_key, server_cert = issue(SERVER_NAME, Role.CONTROL)
    client_key, client_cert = issue("bench-client", Role.COMPUTE)
    ca_pem = x509.cert_to_pem(ca.cert)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.crt").write_bytes(ca_pem)
    (out / "client.key").write_bytes(client_key)
    (out / "client.crt").write_bytes(client_cert)

    server = aio.server(options=SERVER_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        "bench.Reference", {"Ping": grpc.unary_unary_rpc_method_handler(_ping)}
    )
    server.add_generic_rpc_handlers((handler,))
    tls_port = server.add_secure_port(
        f"{host}:0", grpc.ssl_server_credentials([(server_key, server_cert)])
    )
    mtls_port = server.add_secure_port(
        f"{host}:0",
        grpc.ssl_server_credentials(
            [(server_key, server_cert)], root_certificates=ca_pem, require_client_auth=True
        ),
    )
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"ready {tls_port} {mtls_port}", flush=True)
    await stop.wait()
    await server.stop(None)


def main() -> None:
    host, out = sys.argv[1], Path(sys.argv[2])
    asyncio.run(serve(host, out))


if __name__ == "__main__":
    main()
