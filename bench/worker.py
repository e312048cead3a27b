"""A load-generator process: many simulated compute nodes in one asyncio loop.

    python bench/worker.py        (driven by bench/run.py over stdin/stdout)

The driver writes one JSON job line, then waits for ``{"ready": ...}``; every
later step starts when the driver writes ``go`` (or ``release``), so several
workers start together. Each simulated node has its own P-256 key and its
own TLS connections (see joiner.py).

Modes:

``join``
    every node joins at once (bootstrap + Enrol, no services); prints
    ``{"results": [...]}``. With ``beat_seconds``, then (on ``beat``) every
    joined node heartbeats as a member does for that long, starting at
    random within ``beat_spread`` seconds; prints what it sent.
``watch``
    ``count`` AdminService.Watch streams on one node over the control's Unix
    socket, each on its own connection, held until that node's next event.
``hold``
    every node bootstraps announcing an agent port, then a stand-in agent
    (one gRPC server on every node's address, presenting each node's
    certificate by SNI) answers the
    control's ``AgentService.ApplyRole`` with one progress message and holds
    the call. Every node's ``Enrol`` stream is thus held open by the control
    at configure-node, until the driver writes ``release``.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc import aio

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd.model import EventRecord
from microstackd.wire.options import SERVER_OPTIONS

import joiner

HOLD_MESSAGE = "held by the benchmark"

_stdin = ThreadPoolExecutor(1, thread_name_prefix="stdin")


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (many TLS connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def say(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


async def hear(expected: str) -> None:
    line = await asyncio.get_running_loop().run_in_executor(_stdin, sys.stdin.readline)
    if line.strip() != expected:
        raise SystemExit(f"worker: expected {expected!r} from the driver, got {line!r}")


class HoldingAgent(pb_grpc.AgentServiceServicer):
    """Answers ApplyRole with one progress message, then holds until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def ApplyRole(
        self, request: pb.ApplyRoleRequest, context: Any
    ) -> AsyncIterator[pb.ApplyRoleResponse]:
        self.calls += 1
        yield pb.ApplyRoleResponse(
            step="bench", state=pb.STEP_STATE_RUNNING, message=HOLD_MESSAGE, percent=50
        )
        await self.release.wait()
        yield pb.ApplyRoleResponse(
            step="bench",
            state=pb.STEP_STATE_DONE,
            message="released by the benchmark: no services",
            percent=100,
            final=True,
        )


async def join_mode(job: dict[str, Any]) -> None:
    host, port = str(job["host"]), int(job["port"])
    secret = joiner.Secret.from_json(job["secret"])
    nodes = [(str(n), str(a)) for n, a in job["nodes"]]
    say({"ready": len(nodes)})
    await hear("go")
    results = await asyncio.gather(
        *(joiner.join(host, port, name, address, secret) for name, address in nodes)
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    say({"results": [r.to_json() for r in results], "cpu_s": usage.ru_utime + usage.ru_stime})
    beat_seconds = float(job.get("beat_seconds", 0))
    if beat_seconds:
        await hear("beat")
        members = [r.member for r in results if r.member is not None]
        spread = float(job.get("beat_spread", 10))
        outcomes = await asyncio.gather(
            *(joiner.heartbeats(m, beat_seconds, spread) for m in members)
        )
        errors = [e for _, e in outcomes if e]
        say(
            {
                "members": len(members),
                "beats": sum(n for n, _ in outcomes),
                "errors": len(errors),
                "error_samples": sorted(set(errors))[:5],
                "session_calls_retried": getattr(joiner, "session_calls_retried", 0),
            }
        )


async def hold_mode(job: dict[str, Any]) -> None:
    host, port = str(job["host"]), int(job["port"])
    secret = joiner.Secret.from_json(job["secret"])
    nodes = [(str(n), str(a)) for n, a in job["nodes"]]
    agent_host, agent_port = str(job["agent_host"]), int(job["agent_port"])
    say({"ready": len(nodes)})
    await hear("go")

    # 1. bootstrap every node, announcing the stand-in agent's port.
    limit = asyncio.Semaphore(int(job.get("bootstrap_concurrency", 64)))
    results = {name: joiner.JoinResult(name=name) for name, _ in nodes}

    async def boot(name: str, address: str) -> joiner.Member | None:
        async with limit:
            r = results[name]
            r.start = time.time()
            try:
                return await joiner.bootstrap(
                    host, port, name, address, secret, r.phases, agent_port
                )
            except Exception as exc:
                r.error = f"bootstrap: {type(exc).__name__}: {exc}"
                return None

    booted = await asyncio.gather(*(boot(n, a) for n, a in nodes))
    members = [m for m in booted if m is not None]

    # 2. the stand-in agent, presenting each node's certificate (chosen by SNI).
    agent = HoldingAgent()
    server = aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_AgentServiceServicer_to_server(agent, server)
    pairs = [(m.creds.key_pem, m.creds.cert_pem) for m in members]
    tls = grpc.ssl_server_credentials(pairs)
    for address in sorted({a for _, a in nodes} | {agent_host}):
        server.add_secure_port(f"{address}:{agent_port}", tls)
    await server.start()
    say({"bootstrapped": len(members), "errors": [r.error for r in results.values() if r.error]})
    await hear("go")

    # 3. every node's Enrol stream, held by the control at configure-node.
    held = failed = 0
    all_held = asyncio.Event()

    def settled() -> None:
        if held + failed >= len(members):
            all_held.set()

    def on_event(event: EventRecord) -> None:
        nonlocal held
        if event.step == "configure-node" and HOLD_MESSAGE in event.message:
            held += 1
            settled()

    async def follow(m: joiner.Member) -> None:
        nonlocal failed
        r = results[m.name]
        try:
            await joiner.enrol(m, r, on_event)
            r.ok = True
        except Exception as exc:
            r.error = f"enrol: {type(exc).__name__}: {exc}"
            failed += 1
            settled()
        r.end = time.time()

    started = time.time()
    tasks = [asyncio.create_task(follow(m)) for m in members]
    try:
        await asyncio.wait_for(all_held.wait(), timeout=float(job.get("hold_timeout", 300)))
    except TimeoutError:
        pass
    say({"held": held, "calls": agent.calls, "seconds": time.time() - started})
    await hear("release")
    agent.release.set()
    await asyncio.gather(*tasks)
    await server.stop(None)
    say({"results": [r.to_json() for r in results.values()]})


async def watch_mode(job: dict[str, Any]) -> None:
    """``count`` AdminService.Watch streams on one node, each on its own connection
    to the control's Unix socket, held until the node's next event arrives."""
    socket, node, after = str(job["socket"]), str(job["node"]), int(job["after_seq"])
    count = int(job["count"])
    say({"ready": count})
    await hear("go")
    # A local subchannel pool per channel: one connection each, as separate CLIs would have.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [aio.insecure_channel(f"unix:{socket}", options=options) for _ in range(count)]
    arrivals: list[float | None] = [None] * count
    seqs: list[int] = [0] * count
    errors: list[str] = []

    async def watch(i: int) -> None:
        stub = pb_grpc.AdminServiceStub(channels[i])
        try:
            async for response in stub.Watch(pb.WatchRequest(node=node, after_seq=after)):
                if arrivals[i] is None:
                    arrivals[i] = time.time()
                    seqs[i] = int(response.event.seq)
        except aio.AioRpcError as exc:
            errors.append(f"{exc.code().name}: {exc.details()}")

    tasks = [asyncio.create_task(watch(i)) for i in range(count)]
    say({"opened": count})
    _, pending = await asyncio.wait(tasks, timeout=float(job.get("timeout", 300)))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    await asyncio.gather(*(c.close(None) for c in channels))
    say(
        {
            "arrivals": arrivals,
            "seqs": seqs,
            "errors": errors[:5],
            "error_count": len(errors),
            "pending": len(pending),
        }
    )


async def main() -> None:
    raise_nofile()
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(32))
    job = json.loads(sys.stdin.readline())
    if job["mode"] == "join":
        await join_mode(job)
    elif job["mode"] == "hold":
        await hold_mode(job)
    elif job["mode"] == "watch":
        await watch_mode(job)
    else:
        raise SystemExit(f"worker: unknown mode {job['mode']!r}")


if __name__ == "__main__":
    asyncio.run(main())
