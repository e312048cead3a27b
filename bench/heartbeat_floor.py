"""The floor under the heartbeat figure: what a bare grpc.aio server pays
for one small message per mTLS connection every 10 s, with no microstackd.

    python bench/heartbeat_floor.py [N ...]      (default 1000 3000)
    python bench/heartbeat_floor.py --keepalive [--procs K] [N ...]


Not a part of run.py (docs/performance.md quotes it as a one-off): a server
process with the daemon's server options and a client-streaming method that
does nothing, N channels from one client process (each its own connection,
the same client certificate), every stream sending a 60-byte message every
10 s from a random start; the server's CPU over 10 s once all are up, and
the same with the streams idle (keepalive pings only).

``--keepalive`` asks what liveness by the connection's HTTP/2 keepalive
would cost instead: for each N, a fresh server and N streams from K client
processes (default: one per 2,500), then the server's CPU over 20 s in
three cases: (a) idle streams with today's options (both ends ping every
10 s); (b) idle streams where only the server pings (the clients'
keepalive off; the server also sends pings without data, which grpc's
default of 2 would stop); (c) as (b), each stream sending one message
every 60 s from a random start. The load average is printed beside each.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
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


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(creds: dict[str, str], port: int, extra: list[Any] | None = None) -> None:
    raise_nofile()
    own = dict(extra or [])
    options = [*((k, v) for k, v in SERVER_OPTIONS if k not in own), *own.items()]
    server = aio.server(options=options)

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


#: The keepalive cases: (client keepalive on, extra server options, seconds between messages).
CASES: dict[str, tuple[bool, list[Any], float]] = {
    "a_idle_both_ping": (True, [], 0.0),
    "b_idle_server_pings": (False, [("grpc.http2.max_pings_without_data", 0)], 0.0),
    "c_server_pings_msg_60s": (False, [("grpc.http2.max_pings_without_data", 0)], 60.0),
}


async def hold(creds: dict[str, str], port: int, n: int, keepalive: bool, every: float) -> None:
    """A client process: n channels, one stream each, a message every ``every`` s (0: never)."""
    raise_nofile()
    credentials = grpc.ssl_channel_credentials(
        root_certificates=creds["ca"].encode(),
        private_key=creds["key"].encode(),
        certificate_chain=creds["cert"].encode(),
    )
    base = CHANNEL_OPTIONS if keepalive else [o for o in CHANNEL_OPTIONS if "keepalive" not in o[0]]
    options = [
        *base,
        ("grpc.ssl_target_name_override", "ctl"),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    channels = [
        aio.secure_channel(f"{HOST}:{port}", credentials, options=options) for _ in range(n)
    ]
    calls = [c.stream_unary("/x.Y/C")() for c in channels]
    for i in range(0, n, 200):  # a bounded burst of handshakes at a time
        await asyncio.gather(*(call.write(b"x" * 60) for call in calls[i : i + 200]))
    print("up", flush=True)

    async def beat(call: Any) -> None:
        await asyncio.sleep(random.uniform(0, every))
        while True:
            await call.write(b"x" * 60)
            await asyncio.sleep(every)

    tasks = [asyncio.create_task(beat(c)) for c in calls] if every else []
    await asyncio.sleep(3600)
    del tasks


def keepalive_cases(sizes: list[int], procs: int) -> None:
    server_creds, client_creds = issue()
    for n in sizes:
        for case, (keepalive, extra, every) in CASES.items():
            port = free_port(HOST)
            server = subprocess.Popen(
                [sys.executable, str(Path(__file__)), "serve", json.dumps(server_creds), str(port),
                 json.dumps(extra)],
                stdout=subprocess.PIPE,
            )  # fmt: skip
            clients: list[subprocess.Popen[bytes]] = []
            try:
                assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
                k = procs or max(1, -(-n // 2500))
                t0 = time.monotonic()
                for j in range(k):
                    share = n // k + (1 if j < n % k else 0)
                    args = [json.dumps(client_creds), str(port), str(share), str(int(keepalive)),
                            str(every)]  # fmt: skip
                    clients.append(subprocess.Popen(
                        [sys.executable, str(Path(__file__)), "hold", *args], stdout=subprocess.PIPE
                    ))  # fmt: skip
                for c in clients:
                    assert c.stdout is not None and c.stdout.readline().strip() == b"up"
                up_s = round(time.monotonic() - t0, 1)
                time.sleep(INTERVAL + 5)  # past the handshakes and the first pings
                load0 = os.getloadavg()[0]
                cpu0 = cpu_seconds(server.pid)
                time.sleep(20)
                pct = round((cpu_seconds(server.pid) - cpu0) / 20 * 100, 1)
                row = {"n": n, "case": case, "server_pct_of_one_core": pct, "clients": k,
                       "up_s": up_s, "load1": [round(load0, 1), round(os.getloadavg()[0], 1)],
                       "at": datetime.now(UTC).strftime("%H:%M:%S")}  # fmt: skip
                print(json.dumps(row), flush=True)
            finally:
                for c in clients:
                    c.kill()
                    c.wait(10)
                server.kill()
                server.wait(10)


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else []
        asyncio.run(serve(json.loads(sys.argv[2]), int(sys.argv[3]), [tuple(e) for e in extra]))
        return
    if sys.argv[1:2] == ["hold"]:
        a = sys.argv[2:7]  # creds, port, n, keepalive, every
        asyncio.run(hold(json.loads(a[0]), int(a[1]), int(a[2]), a[3] == "1", float(a[4])))
        return
    if sys.argv[1:2] == ["--keepalive"]:
        rest = sys.argv[2:]
        procs = 0
        if rest[:1] == ["--procs"]:
            procs, rest = int(rest[1]), rest[2:]
        keepalive_cases([int(a) for a in rest] or [1000, 10000], procs)
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
