"""A flood of the bootstrap port does not starve the daemon (issue 14,
item 2). A real control, with a member, is flooded from one source
(127.0.0.2) and from many (127.0.0.3-250): idle TCP connections, half-open
TLS (a record header, then nothing), and gRPC streams that never answer.
Meanwhile `microstackctl status` on the local socket answers, the member's
heartbeat on the mTLS port is taken, and a legitimate join from another
source (127.0.0.1) gets in.

The control starts with the soft descriptor limit at 1,024 (the usual
default; the flood alone is larger), which it must raise to the hard one.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc import aio

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd.peers.bootstrap import fetch_bootstrap_certificate
from microstackd.store import Store
from tests.integration.attacker import (
    SourceRelay,
    channel,
    fd_limits,
    open_fds,
    raise_own_fd_limit,
    raw_connections,
    still_open,
)
from tests.integration.harness import Node
from tests.integration.test_bounds import _beat

ONE = ["127.0.0.2"]
MANY = [f"127.0.0.{i}" for i in range(3, 251)]
#: A TLS handshake record header announcing more than ever comes.
HALF_TLS = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"


def _start_with_default_fd_limit(make_node: Callable[..., Node], *extra: str) -> Node:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        return make_node("ctl", *extra)  # it inherits the low soft limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_flooded_bootstrap_port_leaves_the_socket_the_mtls_port_and_joiners_alone(
    make_node: Callable[..., Node], password_file: Path
) -> None:
    hard = raise_own_fd_limit()
    control = _start_with_default_fd_limit(make_node, "--unreachable-after", "6")
    assert control.proc is not None
    pid = control.proc.pid
    soft_now, hard_now = fd_limits(pid)
    assert soft_now == hard_now, f"the control kept its soft descriptor limit {soft_now}"
    control.init_control(password_file)
    member = make_node("node-1")
    member.join(control, password_file)
    target = (control.address, control.port)
    flood = min(3000, max(200, hard - 1000))  # what this process can hold
    timings: dict[str, float] = {}

    async def attack() -> dict[str, int]:
        cert = await fetch_bootstrap_certificate(*target)
        async with (
            raw_connections(target, ONE, flood // 3) as idle_one,
            raw_connections(target, MANY, flood // 3) as idle_many,
            raw_connections(target, MANY, flood // 3, HALF_TLS) as half_tls,
            SourceRelay(target, ONE[0]) as relay,
        ):
            channels = [channel(relay, cert) for _ in range(20)]
            calls = []
            for c in channels:  # streams that never send their hello
                stub = pb_grpc.BootstrapServiceStub(c)
                calls += [stub.Exchange(timeout=60) for _ in range(5)]
            await asyncio.sleep(1.0)  # let the gate and grpc take it all in
            seen = {
                "idle_one_open": still_open(idle_one),
                "idle_many_open": still_open(idle_many),
                "half_tls_open": still_open(half_tls),
                "control_fds": open_fds(pid),
            }
            # Meanwhile: the local socket, the mTLS port, and a joiner from elsewhere.
            started = time.monotonic()
            status = await asyncio.to_thread(control.ctl, "status", "--format", "json")
            timings["status_s"] = time.monotonic() - started
            assert status.returncode == 0
            beat = await asyncio.to_thread(
                _beat, control, member, [pb.ServiceStatus(name="nova-compute", state="running")]
            )
            assert beat is grpc.StatusCode.OK, beat
            newcomer = await asyncio.to_thread(make_node, "node-2")
            started = time.monotonic()
            await asyncio.to_thread(newcomer.join, control, password_file, "--timeout", "120")
            timings["join_s"] = time.monotonic() - started
            seen["control_fds_after"] = open_fds(pid)
            for call in calls:
                call.cancel()
            await asyncio.gather(*(c.close(None) for c in channels))
        return seen

    seen = asyncio.run(attack())
    print(f"measured: flood of {flood} connections + 100 silent streams: {seen}, {timings}")
    # One source holds at most its share; the many, at most the total cap.
    assert seen["idle_one_open"] <= 8, seen
    assert seen["idle_many_open"] + seen["half_tls_open"] <= 1024, seen
    assert seen["control_fds"] < soft_now // 2, seen
    nodes = {n["name"]: n["state"] for n in control.status()["nodes"]}
    assert nodes == {"ctl": "active", "node-1": "active", "node-2": "active"}, nodes
    store = Store(member.state_dir)
    try:
        assert store.cluster() is not None
    finally:
        store.close()
    # And it is all given back once the flood ends.
    deadline = time.monotonic() + 30
    while open_fds(pid) > 200:
        assert time.monotonic() < deadline, f"{open_fds(pid)} descriptors still open"
        time.sleep(0.5)
    assert aio is not None


def test_joiners_behind_one_source_over_its_share_wait_and_all_get_in(
    make_node: Callable[..., Node], password_file: Path
) -> None:
    """Three computes behind one address (a NAT, an IPv6 LAN) joining at once
    against a share of one: the ones over it wait and retry, none fails."""
    control = make_node("ctl", "--bootstrap-per-source", "1")
    control.init_control(password_file)
    nodes = [make_node(f"node-{i}") for i in range(1, 4)]

    async def join_all() -> None:
        await asyncio.gather(
            *(asyncio.to_thread(n.join, control, password_file, "--timeout", "120") for n in nodes)
        )

    asyncio.run(join_all())
    states = {n["name"]: n["state"] for n in control.status()["nodes"]}
    assert states == {"ctl": "active", "node-1": "active", "node-2": "active", "node-3": "active"}
