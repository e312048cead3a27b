"""The measurements, one function per part of the benchmark (see run.py).

Every function takes the ``Fleet`` that owns the processes it starts and
returns plain JSON-able data; figures come only from what the run measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import grpc

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd.peers.cluster import ControlClient

import joiner
from fleet import CLK_TCK, Daemon, Fleet, free_port, tool
from stats import ms, p50, p99, summary_ms

BENCH = Path(__file__).resolve().parent
PASSWORD = "correct horse battery staple"
CONTROL_HOST = "127.0.0.1"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the machine -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))  # type: ignore[union-attr]
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    others = other_daemons()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": version("grpcio"),
        "protobuf": version("protobuf"),
        "cryptography": version("cryptography"),
        "pynacl": version("pynacl"),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "other_microstackd_processes_at_start": len(others),
    }


def other_daemons() -> list[int]:
    """microstackd processes on this machine that this benchmark did not start."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"microstackd" in cmd and b"bench" not in cmd:
                found.append(int(entry.name))
    return found


# --- helpers -----------------------------------------------------------------------------------


def write_password(root: Path) -> Path:
    path = root / "password.txt"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


#: Every simulated node of a run dials the control from the same loopback
#: source (127.0.0.1), where real ones each have an address of their own:
#: the per-source caps of the bootstrap port (docs/security.md) are lifted
#: to what a fleet that size would have in all. The gate stays in front.
CONTROL_FLAGS = ("--bootstrap-per-source", "100000", "--bootstrap-connections", "100000")


def start_control(
    fleet: Fleet, name: str, password_file: Path, root: Path | None = None
) -> tuple[Daemon, float]:
    """A fresh control, initialised; return it and the wall time of its ``init``."""
    ctl = fleet.daemon(name, CONTROL_HOST, root=root, extra=CONTROL_FLAGS)
    started = time.perf_counter()
    ctl.ctl(
        "init",
        "--role",
        "control",
        "--address",
        CONTROL_HOST,
        "--password-file",
        str(password_file),
    )
    return ctl, time.perf_counter() - started


def secret_for(ctl: Daemon) -> tuple[joiner.Secret, float]:
    """Probe the control's KDF parameters and derive the verifier once (timed)."""
    kdf = asyncio.run(joiner.probe_kdf(CONTROL_HOST, ctl.port))
    return joiner.derive(PASSWORD, kdf)


def sim_address(i: int) -> str:
    """A distinct loopback address per simulated node (only named in its hello)."""
    return f"127.1.{i // 250}.{i % 250 + 1}"


def sim_name(i: int) -> str:
    return f"sim-{i:05d}"


def control_events(ctl: Daemon, node: str) -> list[tuple[int, str, str, float]]:
    """(seq, step, state, time) of a node's events, read from the control's database."""
    db = sqlite3.connect(f"file:{ctl.state_dir / 'microstackd.db'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT seq, step, state, time FROM events WHERE node = ? ORDER BY seq", (node,)
        ).fetchall()
    finally:
        db.close()
    return [(int(s), str(st), str(state), float(t)) for s, st, state, t in rows]


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Worker:
    """A bench/worker.py process, spoken to in JSON lines."""

    def __init__(self, fleet: Fleet, job: dict[str, Any], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as err:
            self.proc = fleet.spawn(
                [sys.executable, str(BENCH / "worker.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self.send(json.dumps(job))

    def send(self, line: str) -> None:
        stdin: IO[bytes] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(line.encode() + b"\n")
        stdin.flush()

    def recv(self) -> dict[str, Any]:
        stdout: IO[bytes] | None = self.proc.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            self.proc.wait(10)
            raise RuntimeError(
                f"worker exited {self.proc.returncode}: {self.log_path.read_text()[-3000:]}"
            )
        data: dict[str, Any] = json.loads(line)
        return data

    def finish(self) -> None:
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Profiler:
    """py-spy sampling a daemon into collapsed stacks, when asked for (--profile)."""

    def __init__(self, fleet: Fleet, pid: int, out: Path | None, rate: int = 250) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.out = out
        if out is None:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        self.proc = fleet.spawn(
            [
                tool("py-spy"),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(rate),
                "--format",
                "raw",
                "--nonblocking",
                "--threads",
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# --- 1. join overhead and its references -------------------------------------------------------


def reference(fleet: Fleet, samples: int) -> dict[str, Any]:
    """A bare (m)TLS handshake + one unary RPC against a minimal grpc.aio server process."""
    out = fleet.root / "reference"
    proc = fleet.spawn(
        [sys.executable, str(BENCH / "refserver.py"), CONTROL_HOST, str(out)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().split()
    if not line or line[0] != "ready":
        raise RuntimeError("the reference server did not start")
    tls_port, mtls_port = int(line[1]), int(line[2])
    ca = (out / "ca.crt").read_bytes()
    key, cert = (out / "client.key").read_bytes(), (out / "client.crt").read_bytes()

    async def measure() -> dict[str, list[float]]:
        for _ in range(10):  # warm up both sides
            await joiner.tls_rpc_once(CONTROL_HOST, tls_port, ca)
            await joiner.tls_rpc_once(CONTROL_HOST, mtls_port, ca, key, cert)
        tls, mtls = [], []
        for _ in range(samples):
            tls.append(await joiner.tls_rpc_once(CONTROL_HOST, tls_port, ca))
            mtls.append(await joiner.tls_rpc_once(CONTROL_HOST, mtls_port, ca, key, cert))
        warm = await joiner.warm_rpc_samples(CONTROL_HOST, tls_port, ca, samples)
        return {"tls": tls, "mtls": mtls, "warm": warm}

    try:
        data = asyncio.run(measure())
    finally:
        proc.terminate()
        proc.wait(10)
    return {
        "tls_rpc": summary_ms(data["tls"]),
        "mtls_rpc": summary_ms(data["mtls"]),
        "warm_unary": summary_ms(data["warm"]),
    }


def kdf_time(secret: joiner.Secret, repeats: int) -> dict[str, Any]:
    samples = [joiner.derive(PASSWORD, secret.kdf)[1] for _ in range(repeats)]
    k = secret.kdf
    return {**summary_ms(samples), "params": f"scrypt n=2^{k.log2_n} r={k.r} p={k.p}"}


def serial_joins(ctl: Daemon, secret: joiner.Secret, count: int, warmup: int = 5) -> dict[str, Any]:
    """``count`` joins one after another (after ``warmup`` uncounted ones)."""

    async def run() -> list[joiner.JoinResult]:
        results = []
        for i in range(warmup + count):
            name = sim_name(i) if i >= warmup else f"warm-{i:02d}"
            r = await joiner.join(CONTROL_HOST, ctl.port, name, sim_address(i), secret)
            if i >= warmup:
                results.append(r)
        return results

    cpu0 = ctl.cpu_seconds()
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    results = asyncio.run(run())
    cpu = ctl.cpu_seconds() - cpu0
    busy, own = machine_busy_seconds() - busy0, own_cpu_seconds() - own0
    ok = [r for r in results if r.ok]
    phases = sorted({k for r in ok for k in r.phases})
    return {
        "joins": len(results),
        "errors": len(results) - len(ok),
        "error_samples": sorted({r.error for r in results if r.error})[:5],
        "seconds": summary_ms([r.seconds for r in ok]),
        "phases_p50_ms": {k: ms(p50([r.phases[k] for r in ok if k in r.phases])) for k in phases},
        "control_cpu_ms_per_join": round(cpu / max(len(results), 1) * 1000, 2),
        "wall_s": round(sum(r.seconds for r in results), 2),
        "other_processes_cpu_s": round(max(0.0, busy - cpu - own), 2),
    }


def crypto_cost(secret: joiner.Secret, repeats: int) -> dict[str, Any]:
    """In-process CPU cost of the bootstrap's cryptography, per side, with the
    product's own ``trust`` room (SPAKE2 is ``microstackd.trust.pake`` on libsodium)."""
    from datetime import UTC, datetime

    from microstackd.model import Role
    from microstackd.trust import exchange, x509

    now = datetime.now(UTC)
    ca = x509.create_ca("benchcluster", now)
    hello = exchange.Hello(node_name="sim-crypto", address="127.0.0.1", hostname="sim-crypto")
    fingerprint = "0" * 64
    control, joiner_side, csr_times, sign_times = [], [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cx = exchange.ControlExchange(
            secret.verifier, "benchcluster", secret.kdf, hello, fingerprint
        )
        message = cx.challenge()
        t1 = time.perf_counter()
        jx = exchange.JoinerExchange(
            secret.verifier, "benchcluster", secret.kdf, hello, fingerprint, message
        )
        t2 = time.perf_counter()
        key = x509.generate_key()
        csr = x509.make_csr(key, "sim-crypto")
        t3 = time.perf_counter()
        pake, confirmation = jx.response(csr)
        t4 = time.perf_counter()
        cx.check_response(pake, csr, confirmation)
        t5 = time.perf_counter()
        x509.sign_csr(
            ca,
            csr,
            node_name="sim-crypto",
            role=Role.COMPUTE,
            address="127.0.0.1",
            hostname="sim-crypto",
            now=now,
        )
        t6 = time.perf_counter()
        control.append((t1 - t0) + (t5 - t4))
        joiner_side.append((t2 - t1) + (t4 - t3))
        csr_times.append(t3 - t2)
        sign_times.append(t6 - t5)
    return {
        "spake2_control_side": summary_ms(control),
        "spake2_joiner_side": summary_ms(joiner_side),
        "keygen_and_csr": summary_ms(csr_times),
        "sign_csr": summary_ms(sign_times),
    }


# --- 2. scale ----------------------------------------------------------------------------------


def concurrent_joins(
    fleet: Fleet,
    ctl: Daemon,
    secret: joiner.Secret,
    nodes: int,
    workers: int,
    profile: Path | None = None,
    prefix: str = "sim",
    beat_window: float = 0.0,
) -> dict[str, Any]:
    """``nodes`` simulated computes enrolling at once, from ``workers`` processes.

    With ``beat_window``, every node that joined then heartbeats as a member
    does (``heartbeats`` below), and the control's CPU is measured over that
    many seconds once every stream is up."""
    names = [(f"{prefix}-{i:05d}", sim_address(i)) for i in range(nodes)]
    shares = [names[w::workers] for w in range(workers)]
    pool = [
        Worker(
            fleet,
            {
                "mode": "join",
                "host": CONTROL_HOST,
                "port": ctl.port,
                "secret": secret.to_json(),
                "nodes": share,
                "beat_seconds": BEAT_SPREAD + BEAT_SETTLE + beat_window + 2 if beat_window else 0,
                "beat_spread": BEAT_SPREAD,
            },
            fleet.root / f"worker-{ctl.name}-{prefix}-{w}.log",
        )
        for w, share in enumerate(shares)
        if share
    ]
    for w in pool:
        w.recv()  # ready
    profiler = Profiler(fleet, ctl.pid, profile)
    rss_before = ctl.rss_mb()
    cpu0 = ctl.cpu_seconds()
    busy0, own0 = machine_busy_seconds(), own_cpu_seconds()
    go = time.time()
    for w in pool:
        w.send("go")
    results: list[dict[str, Any]] = []
    workers_cpu = 0.0
    for w in pool:
        answer = w.recv()
        results.extend(answer["results"])
        workers_cpu += answer["cpu_s"]
    cpu = ctl.cpu_seconds() - cpu0
    busy, own = machine_busy_seconds() - busy0, own_cpu_seconds() - own0
    profiler.stop()
    beats = None
    if beat_window:
        where = profile.with_name(f"heartbeats-{nodes}.txt") if profile else None
        beats = heartbeats(fleet, ctl, pool, beat_window, where)
    for w in pool:
        w.finish()
    ok = [r for r in results if r["ok"]]
    latencies = [r["end"] - r["start"] for r in ok]
    errors = [r for r in results if not r["ok"]]
    keys = sorted({k for r in ok for k in r["phases"]})
    return {
        "nodes": nodes,
        "seconds": round(max(r["end"] for r in results) - go, 2),
        "join_p50_ms": ms(p50(latencies)),
        "join_p99_ms": ms(p99(latencies)),
        "errors": len(errors),
        "error_samples": sorted({r["error"] for r in errors})[:5],
        "first_error_after_s": round(min(r["end"] for r in errors) - go, 2) if errors else None,
        # Bootstraps tried again: refused as busy (a turn given), or unreachable.
        "retries": sum(r.get("attempts", 1) - 1 for r in results),
        "busy_refusals": sum(r.get("busy", 0) for r in results),
        "control_rss_mb": round(ctl.hwm_mb(), 1),
        "control_rss_before_mb": round(rss_before, 1),
        "control_rss_after_mb": round(ctl.rss_mb(), 1),
        "control_cpu_s": round(cpu, 2),
        "control_cpu_ms_per_join": round(cpu / nodes * 1000, 2),
        "control_threads": ctl.threads(),
        "workers_cpu_s": round(workers_cpu, 2),
        "machine_busy_cpu_s": round(busy, 2),
        "other_processes_cpu_s": round(max(0.0, busy - cpu - workers_cpu - own), 2),
        "phases_p50_ms": {
            k: ms(p50([r["phases"][k] for r in ok if k in r["phases"]])) for k in keys
        },
        "phases_p99_ms": {
            k: ms(p99([r["phases"][k] for r in ok if k in r["phases"]])) for k in keys
        },
        "workers": len(pool),
        "profile": str(profile) if profile else None,
        **({"heartbeats": beats} if beats else {}),
    }


#: Heartbeats: members start within this many seconds (the control's default
#: interval, so that they beat spread out as members that joined at different
#: moments do).
BEAT_SPREAD = 10.0
#: Seconds after the last member started before the window opens: each
#: member's first message is a new mTLS connection (the stream's, or the call
#: that brings a datagram key), and 10,000 handshakes take the control's two
#: cores ~40 s; the window measures the beats that follow, not that storm.
BEAT_SETTLE = 45.0


def heartbeats(
    fleet: Fleet, ctl: Daemon, pool: list[Worker], window: float, profile: Path | None = None
) -> dict[str, Any]:
    """Every joined node heartbeats on its own mTLS connection, as a member
    does; the control's CPU over ``window`` seconds of that."""
    for w in pool:
        w.send("beat")
    time.sleep(BEAT_SPREAD + BEAT_SETTLE)
    profiler = Profiler(fleet, ctl.pid, profile)
    rss0, cpu0, t0 = ctl.rss_mb(), ctl.cpu_seconds(), time.perf_counter()
    busy0 = machine_busy_seconds()
    time.sleep(window)
    cpu, seconds = ctl.cpu_seconds() - cpu0, time.perf_counter() - t0
    profiler.stop()
    busy = machine_busy_seconds() - busy0
    rss = ctl.rss_mb()
    answers = [w.recv() for w in pool]
    members = sum(a["members"] for a in answers)
    active = active_computes(ctl.socket, ("active",))
    interval = 10.0  # the control's default: unreachable_after (30 s) / 3
    expected = members * seconds / interval
    return {
        "members": members,
        # Shown active by the control after the window: their beats were taken.
        "members_active": active,
        "window_s": round(seconds, 1),
        "interval_s": interval,
        "control_cpu_s": round(cpu, 2),
        "control_cpu_pct_of_one_core": round(cpu / seconds * 100, 2),
        "control_cpu_us_per_beat": round(cpu / max(expected, 1) * 1e6, 1),
        "beats_sent_in_all": sum(a["beats"] for a in answers),
        "errors": sum(a["errors"] for a in answers),
        "session_calls_retried": sum(a.get("session_calls_retried", 0) for a in answers),
        "error_samples": sorted({e for a in answers for e in a["error_samples"]})[:5],
        "control_rss_before_mb": round(rss0, 1),
        "control_rss_mb": round(rss, 1),
        "machine_busy_pct": round(busy / seconds * 100 / (os.cpu_count() or 1), 1),
    }


def active_computes(socket: Path, enrolled: tuple[str, ...] = ("active", "unreachable")) -> int:
    channel = grpc.insecure_channel(f"unix:{socket}")
    try:
        status = pb_grpc.AdminServiceStub(channel).Status(pb.StatusRequest(), timeout=60)
    finally:
        channel.close()
    # Simulated nodes send no heartbeats: status shows them "unreachable" once
    # the control has not heard from them for a while; they are enrolled all the
    # same (``enrolled``'s default).
    return sum(1 for n in status.nodes if n.role == pb.ROLE_COMPUTE and n.state in enrolled)


def top_up(fleet: Fleet, ctl: Daemon, secret: joiner.Secret, target: int) -> int:
    """Join more nodes (200 at a time) until ``target`` computes are active; return how many."""
    added = 0
    for round_ in range(10):
        missing = target - active_computes(ctl.socket)
        if missing <= 0:
            break
        batch = min(missing, 200)
        concurrent_joins(fleet, ctl, secret, batch, 1, prefix=f"top{round_}")
        added += batch
    return added


# --- 3. status and streams ---------------------------------------------------------------------


def status_rpc(socket: Path, samples: int) -> dict[str, Any]:
    """AdminService.Status over the Unix socket (what `microstackctl status` calls)."""
    channel = grpc.insecure_channel(f"unix:{socket}")
    stub = pb_grpc.AdminServiceStub(channel)
    try:
        nodes = len(stub.Status(pb.StatusRequest(), timeout=60).nodes)
        for _ in range(5):
            stub.Status(pb.StatusRequest(), timeout=60)
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            stub.Status(pb.StatusRequest(), timeout=60)
            times.append(time.perf_counter() - started)
    finally:
        channel.close()
    return {"nodes": nodes, **summary_ms(times)}


def member_calls(
    ctl: Daemon, secret: joiner.Secret, samples: int
) -> tuple[dict[str, Any], joiner.Member]:
    """From one more simulated member: GetClusterStatus over mTLS on a warm channel,
    and what Enrol does for a node that is already active."""

    async def run() -> tuple[dict[str, Any], joiner.Member]:
        result = joiner.JoinResult(name="sim-status")
        member = await joiner.bootstrap(
            CONTROL_HOST, ctl.port, "sim-status", "127.3.0.1", secret, result.phases
        )
        await joiner.enrol(member, result)
        client = ControlClient(member.cluster, member.creds)
        times = []
        try:
            await client.status()
            for _ in range(samples):
                started = time.perf_counter()
                _, nodes = await client.status()
                times.append(time.perf_counter() - started)
        finally:
            await client.close()
        again = joiner.JoinResult(name="sim-status")
        started = time.perf_counter()
        await joiner.enrol(member, again)
        return {
            "get_cluster_status": {"nodes": len(nodes), **summary_ms(times)},
            "enrol_of_active_node": {
                "events": len(again.events),
                "ms": ms(time.perf_counter() - started),
                "final_state": again.final_state,
            },
        }, member

    return asyncio.run(run())


def socket_fds(pid: int) -> int:
    """Open sockets of a process."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except OSError:
            continue
    return count


def watch_streams(
    fleet: Fleet, ctl: Daemon, secret: joiner.Secret, count: int, hold_seconds: float = 3.0
) -> dict[str, Any]:
    """``count`` AdminService.Watch streams held by the control on one node (each
    on its own connection, as ``count`` operators' CLIs would); then that node's
    first event, and how long it takes to reach every watcher. The node has
    bootstrapped but not started its enrolment (an active node's Enrol records
    nothing more: it replays its final event)."""
    node = "sim-watch"

    async def boot() -> joiner.Member:
        phases: dict[str, float] = {}
        return await joiner.bootstrap(CONTROL_HOST, ctl.port, node, "127.3.0.2", secret, phases)

    member = asyncio.run(boot())
    worker = Worker(
        fleet,
        {
            "mode": "watch",
            "socket": str(ctl.socket),
            "node": node,
            "after_seq": 0,
            "count": count,
        },
        fleet.root / f"worker-{ctl.name}-watch.log",
    )
    worker.recv()  # ready
    rss0, fds0, threads0 = ctl.rss_mb(), socket_fds(ctl.pid), ctl.threads()
    started = time.perf_counter()
    worker.send("go")
    worker.recv()  # opened (client side)
    deadline = time.monotonic() + 60
    while socket_fds(ctl.pid) - fds0 < count and time.monotonic() < deadline:
        time.sleep(0.05)
    open_seconds = time.perf_counter() - started
    held = socket_fds(ctl.pid) - fds0
    time.sleep(hold_seconds / 3)
    cpu0 = ctl.cpu_seconds()
    time.sleep(hold_seconds)
    cpu_holding = (ctl.cpu_seconds() - cpu0) / hold_seconds
    rss_held, threads_held = ctl.rss_mb(), ctl.threads()

    async def trigger() -> None:  # the node's enrolment starts: its first event
        await joiner.enrol(member, joiner.JoinResult(name=node))

    asyncio.run(trigger())
    result = worker.recv()
    worker.finish()
    events = {seq: t for seq, _, _, t in control_events(ctl, node)}
    latencies = [
        arrived - events[seq]
        for arrived, seq in zip(result["arrivals"], result["seqs"], strict=True)
        if arrived is not None and seq in events
    ]
    return {
        "streams": count,
        "held": held,
        "seconds_to_open_all": round(open_seconds, 2),
        "delivered": len(latencies),
        "errors": result["error_count"] + result["pending"],
        "error_samples": result["errors"],
        "control_rss_before_mb": round(rss0, 1),
        "control_rss_holding_mb": round(rss_held, 1),
        "control_rss_per_stream_kb": round((rss_held - rss0) * 1024 / max(held, 1), 1),
        "control_threads": [threads0, threads_held],
        "control_cpu_while_holding_pct": round(cpu_holding * 100, 2),
        "fan_out_latency": summary_ms(latencies),
    }


def held_streams(
    fleet: Fleet, ctl: Daemon, secret: joiner.Secret, count: int, hold_seconds: float = 5.0
) -> dict[str, Any]:
    """``count`` Enrol streams held open by the control (see worker.py, hold mode)."""
    # Each node its own address (the control refuses a second node at an
    # address already taken); the stand-in agent listens on all of them.
    agent_host = "127.4.0.1"
    worker = Worker(
        fleet,
        {
            "mode": "hold",
            "host": CONTROL_HOST,
            "port": ctl.port,
            "secret": secret.to_json(),
            "nodes": [(f"hold-{i:05d}", f"127.4.{i // 250}.{i % 250 + 1}") for i in range(count)],
            "agent_host": agent_host,
            "agent_port": free_port(agent_host),
        },
        fleet.root / f"worker-{ctl.name}-hold.log",
    )
    worker.recv()  # ready
    rss_idle = ctl.rss_mb()
    worker.send("go")
    booted = worker.recv()
    rss_booted = ctl.rss_mb()
    threads_booted = ctl.threads()
    worker.send("go")
    held = worker.recv()
    rss_held = ctl.rss_mb()
    cpu0 = ctl.cpu_seconds()
    time.sleep(hold_seconds)
    cpu_idle_holding = (ctl.cpu_seconds() - cpu0) / hold_seconds
    rss_held_later = ctl.rss_mb()
    threads_held = ctl.threads()
    worker.send("release")
    results = worker.recv()["results"]
    worker.finish()
    done = sum(1 for r in results if r["ok"])
    return {
        "streams_requested": count,
        "bootstrapped": booted["bootstrapped"],
        "held": held["held"],
        "seconds_to_hold_all": round(held["seconds"], 2),
        "completed_after_release": done,
        "errors": count - done,
        "error_samples": sorted({r["error"] for r in results if r["error"]})[:5],
        "control_rss_idle_mb": round(rss_idle, 1),
        "control_rss_bootstrapped_mb": round(rss_booted, 1),
        "control_rss_holding_mb": round(max(rss_held, rss_held_later), 1),
        "control_rss_per_stream_kb": round(
            (max(rss_held, rss_held_later) - rss_booted) * 1024 / max(held["held"], 1), 1
        ),
        "control_hwm_mb": round(ctl.hwm_mb(), 1),
        "control_threads_holding": threads_held,
        "control_threads_before": threads_booted,
        "control_cpu_while_holding_pct": round(cpu_idle_holding * 100, 2),
    }


# --- 4. the CLI as an operator sees it ---------------------------------------------------------


@dataclass
class CliRun:
    seconds: float
    returncode: int
    lines: list[tuple[float, bytes]]
    stderr: bytes


def run_cli(argv: Sequence[str], timeout: float = 300.0) -> CliRun:
    """Run a command, timestamping each stdout line as it arrives (time.time())."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines = []
    for line in iter(proc.stdout.readline, b""):
        lines.append((time.time(), line))
    stderr = proc.stderr.read()
    proc.wait(timeout)
    return CliRun(time.perf_counter() - started, proc.returncode, lines, stderr)


def cli_times(argv: Sequence[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        run = run_cli(argv)
        if run.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {run.returncode}: {run.stderr.decode()}")
        times.append(run.seconds)
    return times


def cli_cluster(
    fleet: Fleet,
    password_file: Path,
    table_joins: int,
    json_joins: int,
    status_repeats: int,
    token_joins: int = 0,
) -> dict[str, Any]:
    """Real compute daemons joined with `microstackctl join`; status on 3 nodes; footprint."""
    ctl, init_seconds = start_control(fleet, "ctl-cli", password_file)
    control_ready = ctl.ready_seconds
    time.sleep(3.0)
    control_idle_rss = ctl.rss_mb()
    control_idle_split = ctl.rss_split_mb()
    where = f"{CONTROL_HOST}:{ctl.port}"
    computes: list[Daemon] = []
    joins: list[dict[str, Any]] = []
    latencies: list[float] = []
    status3: dict[str, Any] = {}
    compute_idle_rss = 0.0
    compute_idle_split: dict[str, float] = {}
    for i in range(1, table_joins + json_joins + 1):
        as_json = i > table_joins
        address = f"127.0.1.{i}"
        node = fleet.daemon(f"node-{i:02d}", address)
        computes.append(node)
        argv = node.ctl_argv(
            "join", where, "--password-file", str(password_file), "--address", address
        )
        run = run_cli([*argv, "--format", "json"] if as_json else argv)
        if run.returncode != 0:
            raise RuntimeError(
                f"join of {node.name} exited {run.returncode}: {run.stderr.decode()}"
                f"{b''.join(line for _, line in run.lines).decode()}"
            )
        events = control_events(ctl, node.name)
        configure = [t for _, step, _, t in events if step == "configure-node"]
        record: dict[str, Any] = {
            "node": node.name,
            "format": "json" if as_json else "table",
            "seconds": run.seconds,
            "configure_node_seconds": (max(configure) - min(configure)) if configure else 0.0,
            "compute_ready_seconds": node.ready_seconds,
        }
        if as_json:
            times = {seq: t for seq, _, _, t in events}
            start = run.lines[0][0] if run.lines else 0.0
            for arrived, line in run.lines:
                event = json.loads(line)
                if event["seq"] in times:
                    latencies.append(arrived - times[event["seq"]])
                if event["step"] == "bootstrap" and event["state"] == "done":
                    record["bootstrap_done_after_first_line_s"] = arrived - start
        joins.append(record)
        if i == 2:
            time.sleep(3.0)  # let the services' start-up settle
            compute_idle_rss = computes[0].rss_mb()
            compute_idle_split = computes[0].rss_split_mb()
            status3 = {
                "control_socket": summary_ms(cli_times(ctl.ctl_argv("status"), status_repeats)),
                "compute_socket": summary_ms(
                    cli_times(computes[0].ctl_argv("status"), max(5, status_repeats // 2))
                ),
                "rpc": status_rpc(ctl.socket, 100),
            }
    tokens = token_cli_joins(fleet, ctl, computes, token_joins) if token_joins else None
    fleet.stop_daemons(computes)
    # Start-up of an initialised control (its state already on disk).
    restarts = []
    for _ in range(3):
        ctl.stop()
        ctl.start()
        restarts.append(ctl.ready_seconds)
    ctl.stop()
    table = [j for j in joins if j["format"] == "table"]
    with_services = [j["seconds"] for j in joins]
    no_services = [j["seconds"] - j["configure_node_seconds"] for j in joins]
    return {
        "control_init_seconds": round(init_seconds, 3),
        "control_ready_fresh_ms": ms(control_ready),
        "control_ready_restart_ms": ms(p50(restarts)),
        "compute_ready_fresh_ms": ms(p50([j["compute_ready_seconds"] for j in joins])),
        "control_idle_rss_mb": round(control_idle_rss, 1),
        "compute_idle_rss_mb": round(compute_idle_rss, 1),
        "control_idle_rss_split_mb": control_idle_split,
        "compute_idle_rss_split_mb": compute_idle_split,
        "joins": len(joins),
        "join_table_format": summary_ms([j["seconds"] for j in table]),
        "join_all": summary_ms(with_services),
        "join_no_services_derived": summary_ms(no_services),
        "configure_node": summary_ms([j["configure_node_seconds"] for j in joins]),
        "bootstrap_done_after_first_line": summary_ms(
            [
                j["bootstrap_done_after_first_line_s"]
                for j in joins
                if "bootstrap_done_after_first_line_s" in j
            ]
        ),
        "event_latency": summary_ms(latencies),
        "status_3_nodes": status3,
        "token": tokens,
        "per_join": joins,
    }


def token_join_supported() -> bool:
    usage = subprocess.run(
        [tool("microstackctl"), "join", "--help"], capture_output=True, text=True, check=False
    ).stdout
    return "--token" in usage


def token_cli_joins(
    fleet: Fleet, ctl: Daemon, computes: list[Daemon], count: int
) -> dict[str, Any] | str:
    """`microstackctl add-node NAME` on the control, then `join --token` on a fresh compute."""
    if not token_join_supported():
        return "n/a: not implemented"
    add, joins, no_services = [], [], []
    for j in range(1, count + 1):
        name, address = f"tok-{j:02d}", f"127.0.2.{j}"
        node = fleet.daemon(name, address)
        computes.append(node)
        created = run_cli(ctl.ctl_argv("add-node", name, "--format", "json"))
        if created.returncode != 0:
            raise RuntimeError(f"add-node {name} exited {created.returncode}: {created.stderr!r}")
        token = json.loads(b"".join(line for _, line in created.lines))["token"]
        run = run_cli(node.ctl_argv("join", "--token", token, "--address", address))
        if run.returncode != 0:
            raise RuntimeError(
                f"token join of {name} exited {run.returncode}: {run.stderr.decode()}"
                f"{b''.join(line for _, line in run.lines).decode()}"
            )
        configure = [t for _, step, _, t in control_events(ctl, name) if step == "configure-node"]
        add.append(created.seconds)
        joins.append(run.seconds)
        no_services.append(run.seconds - ((max(configure) - min(configure)) if configure else 0.0))
    return {
        "add_node": summary_ms(add),
        "join": summary_ms(joins),
        "join_no_services_derived": summary_ms(no_services),
    }


def cli_floor(repeats: int) -> dict[str, Any]:
    """What any microstackctl command costs before it does anything."""
    python = [sys.executable, "-c", "pass"]
    ctl = tool("microstackctl")
    return {
        "python_startup": summary_ms(cli_times(python, repeats)),
        "microstackctl_version": summary_ms(cli_times([ctl, "--version"], repeats)),
        "microstackctl_help": summary_ms(cli_times([ctl, "--help"], repeats)),
    }


#: Commands whose imports are measured: each runs until it would call the
#: daemon (there is none at this socket), so everything it imports is loaded.
IMPORT_COMMANDS = {
    "--help": ["--help"],
    "status": ["--socket", "/nonexistent/microstackd.sock", "status"],
    "join": ["--socket", "/nonexistent/microstackd.sock", "join", "--token", "x"],
}


def _importtime(argv: list[str]) -> list[tuple[str, int, int, int]]:
    """``python -X importtime`` of ``microstackctl ARGV``: (module, depth,
    self us, cumulative us) in the order importtime prints them."""
    code = f"import sys; sys.argv = ['microstackctl', *{argv!r}]\n"
    code += "from microstackctl.cli import run\nrun()\n"
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=False,
    ).stderr
    rows = []
    for line in err.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        parts = line[len("import time:") :].split("|")
        self_us, cumulative_us, name = int(parts[0]), int(parts[1]), parts[2]
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((name.strip(), depth, self_us, cumulative_us))
    return rows


def _command_imports(rows: list[tuple[str, int, int, int]]) -> dict[str, Any]:
    # What the command imports: everything after the interpreter's own start-up
    # (site and what it loads come first).
    first = next(i for i, (name, depth, _, _) in enumerate(rows) if name == "site" and not depth)
    rows = rows[first + 1 :]
    total_us = sum(cumulative for _, depth, _, cumulative in rows if depth == 0)
    # Time per package entered from outside it: the cumulative time of each such
    # import (importtime prints children before parents). These overlap: grpc's
    # includes asyncio, imported by grpc's extension.
    inclusive: dict[str, int] = {}
    for i, (name, depth, _, cumulative) in enumerate(rows):
        parent = next((n for n, d, _, _ in rows[i + 1 :] if d == depth - 1), "")
        top = name.split(".")[0]
        if parent.split(".")[0] != top:
            inclusive[top] = inclusive.get(top, 0) + cumulative
    return {
        "total_ms": round(total_us / 1000, 1),
        "modules": len(rows),
        "by_package": [
            {"package": p, "inclusive_ms": round(us / 1000, 1)}
            for p, us in sorted(inclusive.items(), key=lambda x: -x[1])[:12]
            if p != "microstackctl"
        ],
        "imported": sorted({name.split(".")[0] for name, _, _, _ in rows}),
    }


def import_time(repeats: int) -> dict[str, Any]:
    """What each measured command imports and what that costs (the median
    run of ``repeats`` by total)."""
    commands = {}
    for command, argv in IMPORT_COMMANDS.items():
        runs = sorted(
            (_command_imports(_importtime(argv)) for _ in range(repeats)),
            key=lambda r: float(r["total_ms"]),
        )
        median = runs[len(runs) // 2]
        median["totals_ms"] = [r["total_ms"] for r in runs]
        commands[command] = median
    return {"commands": commands}
