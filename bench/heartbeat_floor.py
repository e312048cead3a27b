"""The floor under the heartbeat figure: what a bare grpc.aio server pays
for one small message per mTLS connection every 10 s, with no microstackd.

    python bench/heartbeat_floor.py [N ...]      (default 1000 3000)

Not a part of run.py (docs/performance.md quotes it as a one-off): a server
process with the daemon's server options and a client-streaming method that
does nothing, N channels from one client process (each its own connection,
the same client certificate), every stream sending a 60-byte message every
10 s from a random start; the server's CPU over 10 s once all are up, and
the same with the streams idle (keepalive pings only).
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from microstackd.model import Role
from microstackd.trust import x509
from microstackd.wire.options import CHANNEL_OPTIONS, SERVER_OPTIONS

from fleet import cpu_seconds, free_port

HOST = "127.0.0.1"
INTERVAL = 10.0


async def serve(creds: dict[str, str], port: int) -> None:
    server = aio.server(options=SERVER_OPTIONS)

    async def drain(requests: Any, context: Any) -> bytes:
        async for _ in requests:
            pass
        return b""

    handler = grpc.stream_unary_rpc_method_handler(drain)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("x.Y", {"C": handler}),))
    tls = grpc.ssl_server_credentials(
        [(creds["key"].encode(), creds["cert"].encode())],
        root_certificates=creds["ca"].encode(),
        require_client_auth=True,
    )
    server.add_secure_port(f"{HOST}:{port}", tls)
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def issue() -> tuple[dict[str, str], dict[str, str]]:
    now = datetime.now(UTC)
    ca = x509.create_ca("floor", now)

    def leaf(name: str, role: Role) -> dict[str, str]:
        key = x509.generate_key()
        cert = x509.sign_csr(
            ca, x509.make_csr(key, name), node_name=name, role=role, address=HOST,
            hostname=name, now=now,
        )  # fmt: skip
        ca_pem = x509.cert_to_pem(ca.cert).decode()
        return {"key": x509.key_to_pem(key).decode(), "cert": x509.cert_to_pem(cert).decode(),
                "ca": ca_pem}  # fmt: skip

    return leaf("ctl", Role.CONTROL), leaf("n1", Role.COMPUTE)


async def measure(n: int, port: int, client: dict[str, str], pid: int) -> dict[str, float]:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=client["ca"].encode(),
        private_key=client["key"].encode(),
        certificate_chain=client["cert"].encode(),
    )
    options = [
        *CHANNEL_OPTIONS,
        ("grpc.ssl_target_name_override", "ctl"),
        ("grpc.use_local_subchannel_pool", 1),  # one connection per channel
    ]
    channels = [
        aio.secure_channel(f"{HOST}:{port}", credentials, options=options) for _ in range(n)
    ]
    calls = [c.stream_unary("/x.Y/C")() for c in channels]
    for call in calls:
        await call.write(b"x" * 60)
    await asyncio.sleep(3)
    out = {}
    for mode in ("idle", "beating"):
        stop = time.monotonic() + INTERVAL + 13

        async def beat(call: Any, stop: float = stop) -> None:
            await asyncio.sleep(random.uniform(0, INTERVAL))
            while time.monotonic() < stop:
                await call.write(b"x" * 60)
                await asyncio.sleep(INTERVAL)

        tasks = [asyncio.create_task(beat(c)) for c in calls] if mode == "beating" else []
        await asyncio.sleep(INTERVAL + 1)
        cpu0 = cpu_seconds(pid)
        await asyncio.sleep(10)
        out[f"{mode}_pct_of_one_core"] = round((cpu_seconds(pid) - cpu0) / 10 * 100, 1)
        for task in tasks:
            task.cancel()
    out["us_per_beat"] = round(
        (out["beating_pct_of_one_core"] - out["idle_pct_of_one_core"]) / 100 * INTERVAL / n * 1e6
    )
    for channel in channels:
        await channel.close(None)
    return out


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(serve(json.loads(sys.argv[2]), int(sys.argv[3])))
        return
    server_creds, client_creds = issue()
    for n in [int(a) for a in sys.argv[1:]] or [1000, 3000]:
        port = free_port(HOST)
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), "serve", json.dumps(server_creds), str(port)],
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            print(n, asyncio.run(measure(n, port, client_creds, proc.pid)), flush=True)
        finally:
            proc.kill()
            proc.wait(10)


if __name__ == "__main__":
    main()
