"""What serving renewable credentials costs a TLS handshake on the cluster
port: grpc's static server credentials against the dynamic ones
(``wire/credentials.py``), idle and with an update before every handshake.

    .venv/bin/python bench/tls_reload.py [--handshakes N]

An in-process grpc.aio server on 127.0.0.1 with mutual TLS (a cluster CA, a
server and a client certificate made here); the client is Python's ``ssl``,
one TCP connection and full handshake each, in a thread. Prints the median
handshake per variant, and what one ``ServerIdentity.update`` costs.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "daemon"))

import grpc  # noqa: E402
from grpc import aio  # noqa: E402
from grpc_health.v1 import health_pb2_grpc  # noqa: E402
from grpc_health.v1.health import aio as health_aio  # noqa: E402

from microstackd.model import Role  # noqa: E402
from microstackd.trust import x509  # noqa: E402
from microstackd.wire.credentials import ServerIdentity  # noqa: E402


def _pair(ca: x509.CertificateAuthority, name: str) -> tuple[bytes, bytes]:
    key = x509.generate_key()
    cert = x509.issue_certificate(
        ca, key.public_key(), node_name=name, role=Role.COMPUTE, address="127.0.0.1",
        hostname=name, now=datetime.now(UTC),
    )  # fmt: skip
    return x509.key_to_pem(key), x509.cert_to_pem(cert)


def _handshakes(port: int, context: ssl.SSLContext, count: int) -> float:
    times = []
    for _ in range(count):
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with context.wrap_socket(raw) as tls:
                tls.getpeercert(binary_form=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


async def main(count: int) -> None:
    ca = x509.create_ca("0123456789abcdef", datetime.now(UTC))
    roots = ca.cert_pem()
    server_pair, client_pair = _pair(ca, "server"), _pair(ca, "client")
    with tempfile.TemporaryDirectory() as tmp:
        key, cert = Path(tmp, "c.key"), Path(tmp, "c.crt")
        key.write_bytes(client_pair[0])
        cert.write_bytes(client_pair[1])
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.load_cert_chain(cert, key)
        for variant in ("static", "dynamic", "dynamic, updated before every handshake", "static"):
            identity = ServerIdentity(*server_pair, roots)
            credentials = (
                grpc.ssl_server_credentials([server_pair], roots, require_client_auth=True)
                if variant == "static"
                else identity.credentials()
            )
            server = aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), server)
            port = server.add_secure_port("127.0.0.1:0", credentials)
            await server.start()
            churn = None
            if variant.startswith("dynamic, updated"):

                async def update(identity: ServerIdentity = identity) -> None:
                    while True:  # a busy loop: it also competes for the GIL
                        identity.update(*server_pair, roots)
                        await asyncio.sleep(0)

                churn = asyncio.ensure_future(update())
            median = await asyncio.to_thread(_handshakes, port, context, count)
            if churn is not None:
                churn.cancel()
            await server.stop(0)
            print(f"{variant:45} median handshake {median * 1000:6.2f} ms ({count})")
        identity = ServerIdentity(*server_pair, roots)
        start = time.perf_counter()
        for _ in range(1000):
            identity.update(*server_pair, roots)
        print(f"one ServerIdentity.update: {(time.perf_counter() - start) * 1000:.1f} µs")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handshakes", type=int, default=300)
    asyncio.run(main(parser.parse_args().handshakes))
