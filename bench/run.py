"""Benchmarks of microstackd: real daemons on loopback, figures from this run only.

    python bench/run.py [--quick] [--out results.json] [--profile DIR] [--keep]
                        [--parts overhead,cli,floor,footprint,lxd,cloud,streams,scale]
                        [--scale 100,1000,10000]

Parts (docs/performance.md explains each):

1. join protocol overhead (bootstrap + Enrol, no services, KDF excluded),
   beside a bare TLS handshake + unary RPC and the KDF itself;
2. N simulated computes enrolling at once against one control;
3. status latency at scale, event latency to the CLI, held streams;
4. `microstackctl join` / `status` with real compute daemons, CLI import time;
5. idle RSS and start-up time of control and compute daemons (in 4), and
   (``footprint``) what an idle daemon's memory is made of: RSS and PSS
   after init / join and after a restart, and what each imported package
   costs (bench/idle_memory.py);
6. (``lxd``) LXD 5.0's token join beside ours, interleaved in one run
   (bench/lxd.py; needs root and LXD: ``apt-get install lxd``). In the full
   run; ``--quick`` leaves it out unless ``--parts`` names it;
7. (``cloud``) the real cloud's clock: control init, a compute's join, launch
   → ssh login, with the real OpenStack services in network namespaces
   (bench/cloud.py; needs root and the OpenStack environment,
   sandbox/openstack_env.py). In the full run; ``--quick`` leaves it out
   unless ``--parts`` names it, and then runs fewer of each.

Every daemon is stopped at the end, also on error, SIGINT, SIGTERM or
SIGHUP. The soft RLIMIT_NOFILE is raised to the hard limit first (it is
inherited by the daemons and load generators: a control holding 1,000
TLS connections needs more than the usual 1,024 descriptors).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import cloud
import idle_memory
import lxd
import phases
import plot
import report
from fleet import Fleet
from phases import log
from stats import summary_ms
from worker import raise_nofile

#: Where a full run draws how the scale figures grow (docs/performance.md shows it).
DEFAULT_PLOT = Path(__file__).resolve().parent.parent / "docs" / "performance-scale.svg"


@dataclass(frozen=True)
class Plan:
    reference_samples: int
    kdf_repeats: int
    serial_joins: int
    tmpfs_joins: int
    scale: tuple[int, ...]
    scale_tmpfs: bool
    workers: int
    #: Seconds of heartbeats measured after each scale run (0: none).
    heartbeat_window: float
    status_samples: int
    status_cli_at_scale: int
    streams: int
    cli_table_joins: int
    cli_json_joins: int
    cli_token_joins: int
    cli_status: int
    floor_repeats: int
    import_repeats: int
    lxd_rounds: int
    lxd_list_repeats: int
    cloud: cloud.CloudPlan


FULL = Plan(
    reference_samples=300,
    kdf_repeats=10,
    serial_joins=300,
    tmpfs_joins=150,
    scale=(100, 1000, 10000),
    scale_tmpfs=True,
    workers=2,
    heartbeat_window=20.0,
    status_samples=200,
    status_cli_at_scale=10,
    streams=1000,
    cli_table_joins=20,
    cli_json_joins=10,
    cli_token_joins=20,
    cli_status=30,
    floor_repeats=10,
    import_repeats=5,
    lxd_rounds=10,
    lxd_list_repeats=10,
    cloud=cloud.CloudPlan(inits=3, joins=3, warm_launches=3),
)
QUICK = Plan(
    reference_samples=60,
    kdf_repeats=3,
    serial_joins=60,
    tmpfs_joins=30,
    scale=(100,),
    scale_tmpfs=False,
    workers=2,
    heartbeat_window=10.0,
    status_samples=50,
    status_cli_at_scale=5,
    streams=100,
    cli_table_joins=5,
    cli_json_joins=3,
    cli_token_joins=3,
    cli_status=10,
    floor_repeats=5,
    import_repeats=3,
    lxd_rounds=3,
    lxd_list_repeats=5,
    cloud=cloud.CloudPlan(inits=1, joins=2, warm_launches=2),
)


@dataclass
class Context:
    fleet: Fleet
    plan: Plan
    r: dict[str, Any]
    profile: Path | None
    password: Path

    def out(self, name: str) -> Path | None:
        return self.profile / name if self.profile else None


def part_overhead(c: Context) -> None:
    plan, r = c.plan, c.r
    log(f"1. reference: new TLS channel + unary RPC x{plan.reference_samples}")
    r["reference"] = phases.reference(c.fleet, plan.reference_samples)
    r["tls_rpc_p50_ms"] = r["reference"]["tls_rpc"]["p50_ms"]

    log(f"1. join overhead: {plan.serial_joins} serial joins, no services, KDF excluded")
    ctl, _ = phases.start_control(c.fleet, "ctl-overhead", c.password)
    secret, _ = phases.secret_for(ctl)
    r["kdf"] = phases.kdf_time(secret, plan.kdf_repeats)
    r["kdf_ms"] = r["kdf"]["p50_ms"]
    r["crypto"] = phases.crypto_cost(secret, 30 if plan.serial_joins >= 200 else 10)
    profiler = phases.Profiler(c.fleet, ctl.pid, c.out("serial-joins.txt"))
    r["overhead"] = phases.serial_joins(ctl, secret, plan.serial_joins)
    profiler.stop()
    r["join_p50_ms"] = r["overhead"]["seconds"]["p50_ms"]
    r["join_p99_ms"] = r["overhead"]["seconds"]["p99_ms"]
    ctl.stop()

    log(f"1. diagnostic: {plan.tmpfs_joins} serial joins with the control's state on tmpfs")
    with tmpfs() as shm:
        ctl, _ = phases.start_control(c.fleet, "ctl-tmpfs", c.password, root=shm / "ctl")
        secret, _ = phases.secret_for(ctl)
        r["overhead_tmpfs"] = phases.serial_joins(ctl, secret, plan.tmpfs_joins)
        ctl.stop()


def part_scale(c: Context) -> None:
    plan, r = c.plan, c.r
    r["scale"] = []
    for n in plan.scale:
        log(f"2. scale: {n} simulated computes enrolling at once ({plan.workers} processes)")
        ctl, _ = phases.start_control(c.fleet, f"ctl-scale-{n}", c.password)
        secret, _ = phases.secret_for(ctl)
        out = c.out(f"scale-{n}.txt") if n == max(plan.scale) else None
        result = phases.concurrent_joins(
            c.fleet, ctl, secret, n, plan.workers, out, beat_window=plan.heartbeat_window
        )
        r["scale"].append(result)
        log(
            f"   N={n}: {result['seconds']} s, p99 {result['join_p99_ms']} ms, "
            f"errors {result['errors']}, peak RSS {result['control_rss_mb']} MB"
        )
        if "heartbeats" in result:
            h = result["heartbeats"]
            log(
                f"   N={n} heartbeats: {h['members']} members, control CPU "
                f"{h['control_cpu_pct_of_one_core']} % of a core, errors {h['errors']}"
            )
        # Status at every N (how it grows); the rest of part 3 at the largest.
        largest = n == max(plan.scale)
        added = phases.top_up(c.fleet, ctl, secret, n) if result["errors"] else 0
        log(f"3. status with {n} nodes (after {added} more joins to replace failed ones)")
        profiler = phases.Profiler(c.fleet, ctl.pid, c.out(f"status-{n}.txt"))
        rpc = phases.status_rpc(ctl.socket, plan.status_samples)
        profiler.stop()
        cli_status = phases.cli_times(ctl.ctl_argv("status"), plan.status_cli_at_scale)
        cli_json = phases.cli_times(
            ctl.ctl_argv("status", "--format", "json"), plan.status_cli_at_scale
        )
        result["status"] = {
            "top_up_joins": added,
            "rpc": rpc,
            "cli": summary_ms(cli_status),
            "cli_json": summary_ms(cli_json),
        }
        cli_p50 = result["status"]["cli"]["p50_ms"], result["status"]["cli_json"]["p50_ms"]
        log(
            f"   status RPC p99 {rpc['p99_ms']} ms with {rpc['nodes']} nodes; CLI table "
            f"{cli_p50[0]} ms, JSON {cli_p50[1]} ms"
        )
        if largest:
            r["status_top_up_joins"] = added
            calls, _member = phases.member_calls(ctl, secret, 100)
            r["status_at_scale"] = {**result["status"], "member": calls}
            r["status_p99_ms"] = rpc["p99_ms"]
            log(f"3. watch: {plan.streams} Watch streams on one control ({n} nodes)")
            r["watch"] = phases.watch_streams(c.fleet, ctl, secret, plan.streams)
        ctl.stop()
    r["scale_growth"] = growth(r["scale"])

    if plan.scale_tmpfs:
        n = 1000 if 1000 in plan.scale else max(plan.scale)
        log(f"2. diagnostic: {n} at once with the control's state on tmpfs")
        with tmpfs() as shm:
            ctl, _ = phases.start_control(c.fleet, "ctl-scale-tmpfs", c.password, root=shm / "c")
            secret, _ = phases.secret_for(ctl)
            r["scale_tmpfs"] = phases.concurrent_joins(
                c.fleet, ctl, secret, n, plan.workers, c.out(f"scale-{n}-tmpfs.txt")
            )
            ctl.stop()


def part_streams(c: Context) -> None:
    log(f"3. streams: {c.plan.streams} Enrol streams held open by one control")
    ctl, _ = phases.start_control(c.fleet, "ctl-streams", c.password)
    secret, _ = phases.secret_for(ctl)
    c.r["streams"] = phases.held_streams(c.fleet, ctl, secret, c.plan.streams)
    ctl.stop()


def part_cli(c: Context) -> None:
    plan, r = c.plan, c.r
    log(
        f"4. CLI: {plan.cli_table_joins}+{plan.cli_json_joins} password and "
        f"{plan.cli_token_joins} token `microstackctl join` with real compute daemons; "
        "status on 3 nodes"
    )
    cli = phases.cli_cluster(
        c.fleet,
        c.password,
        plan.cli_table_joins,
        plan.cli_json_joins,
        plan.cli_status,
        plan.cli_token_joins,
    )
    r["cli"] = cli
    r["cli_join_p50_ms"] = cli["join_table_format"]["p50_ms"]
    r["cli_join_no_services_p50_ms"] = cli["join_no_services_derived"]["p50_ms"]
    r["cli_status_p50_ms"] = cli["status_3_nodes"]["control_socket"]["p50_ms"]
    r["event_latency_p50_ms"] = cli["event_latency"]["p50_ms"]
    r["event_latency_p99_ms"] = cli["event_latency"]["p99_ms"]
    r["idle_rss_control_mb"] = cli["control_idle_rss_mb"]
    r["idle_rss_compute_mb"] = cli["compute_idle_rss_mb"]
    r["idle_rss_mb"] = max(cli["control_idle_rss_mb"], cli["compute_idle_rss_mb"])
    r["startup_ms"] = {
        "control_fresh": cli["control_ready_fresh_ms"],
        "control_initialised": cli["control_ready_restart_ms"],
        "compute_fresh_p50": cli["compute_ready_fresh_ms"],
    }
    token = cli["token"]
    r["token_join"] = token if isinstance(token, str) else token["join"]
    if not isinstance(token, str):
        r["cli_token_join_p50_ms"] = token["join"]["p50_ms"]


def part_floor(c: Context) -> None:
    log("4. CLI start-up floor and import time")
    c.r["cli_floor"] = phases.cli_floor(c.plan.floor_repeats)
    c.r["import_time"] = phases.import_time(c.plan.import_repeats)


def part_footprint(c: Context) -> None:
    log("5. footprint: idle control and compute, before and after a restart; their imports")
    c.r["footprint"] = idle_memory.measure(c.fleet, c.password, phases.start_control)
    f = c.r["footprint"]
    log(
        f"   control {f['control_after_init']['rss']} MB "
        f"(restarted {f['control_restarted']['rss']}), compute "
        f"{f['compute_after_join']['rss']} MB (restarted {f['compute_restarted']['rss']})"
    )


def part_lxd(c: Context) -> None:
    log(
        f"6. LXD beside us: {c.plan.lxd_rounds} rounds of LXD's token join, "
        "`microstackctl join --token` and `join` with the password, interleaved"
    )
    result = lxd.side_by_side(c.fleet, c.password, c.plan.lxd_rounds, c.plan.lxd_list_repeats)
    c.r["lxd"] = result
    log(
        f"   LXD token {result['lxd_token']['p50_ms']:.0f} ms, ours token "
        f"{result['ours_token']['p50_ms']:.0f} ms ({result['token_ratio']}x), password "
        f"{result['ours_password']['p50_ms']:.0f} ms (KDF {result['kdf']['p50_ms']:.0f} ms)"
    )


def part_cloud(c: Context) -> None:
    p = c.plan.cloud
    log(
        f"7. the real cloud: {p.inits} control init(s), {p.joins} join(s) one at a time, "
        f"1 cold + {p.warm_launches} warm launch(es) with their ssh login"
    )
    result = cloud.measure(p, log)
    c.r["cloud"] = result
    for figure, s in result["summary"].items():
        if s:
            log(f"   {figure}: min {s['min']} median {s['median']} max {s['max']} "
                f"(load {s['load_1m']})")  # fmt: skip


#: In the order a full run takes them: what the machine's load moves most
#: first, the load generators' bursts (scale, streams) last. Part six of
#: docs/performance.md measured the CLI two minutes after the 10,000-join
#: burst, with the interpreter's own start at 2-3x its calm value.
PARTS = {
    "overhead": part_overhead,
    "cli": part_cli,
    "floor": part_floor,
    "footprint": part_footprint,
    "lxd": part_lxd,
    "cloud": part_cloud,
    "streams": part_streams,
    "scale": part_scale,
}
#: Before each part the run waits, up to SETTLE_MAX_S, for the 1-minute load
#: average to fall to SETTLE_LOAD (the previous part's services and load
#: generators gone); the load each part started at is in the results.
SETTLE_LOAD = 1.5
SETTLE_MAX_S = 180.0
PART_NAMES = tuple(PARTS)
#: What --quick runs unless --parts says otherwise: not LXD (it needs LXD
#: installed), not the real cloud (root, the OpenStack environment, minutes).
QUICK_PARTS = tuple(p for p in PART_NAMES if p not in ("lxd", "cloud"))


def run_all(
    fleet: Fleet,
    plan: Plan,
    r: dict[str, Any],
    profile: Path | None,
    parts: Sequence[str] = PART_NAMES,
) -> None:
    """Run the parts; a part that fails is recorded and the next one still runs."""
    c = Context(fleet, plan, r, profile, phases.write_password(fleet.root))
    for name in parts:
        part = PARTS[name]
        waited, load = settle()
        r.setdefault("part_start", {})[name] = {"load_1m": round(load, 2), "waited_s": waited}
        if waited:
            log(f"   (waited {waited} s for the load to settle: {load:.2f})")
        try:
            part(c)
        except Exception as exc:
            log(f"{part.__name__} failed: {type(exc).__name__}: {exc}")
            r.setdefault("part_errors", {})[part.__name__] = f"{type(exc).__name__}: {exc}"
        finally:
            # A part that failed half-way may leave its control running.
            fleet.stop_daemons([d for d in fleet.daemons if d.alive()])


def settle(
    below: float = SETTLE_LOAD,
    most: float = SETTLE_MAX_S,
    load: Callable[[], float] = lambda: os.getloadavg()[0],
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[float, float]:
    """Wait until the 1-minute load average is at most ``below``, or ``most``
    seconds have passed: (seconds waited, the load then)."""
    waited = 0.0
    while (now := load()) > below and waited < most:
        sleep(5.0)
        waited += 5.0
    return waited, now


@contextlib.contextmanager
def tmpfs() -> Iterator[Path]:
    """A directory on /dev/shm (no fsync cost), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="microstackd-bench-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def growth(scale: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """How total time grows with N: per-join time, and the exponent k in t ~ N^k
    between consecutive sizes (1: linear)."""
    out = []
    for i, s in enumerate(scale):
        row: dict[str, Any] = {
            "nodes": s["nodes"],
            "seconds": s["seconds"],
            "ms_per_join": round(s["seconds"] / s["nodes"] * 1000, 1),
            "control_cpu_ms_per_join": s["control_cpu_ms_per_join"],
        }
        if i:
            prev = scale[i - 1]
            row["exponent_vs_previous"] = round(
                math.log(s["seconds"] / prev["seconds"]) / math.log(s["nodes"] / prev["nodes"]), 2
            )
        out.append(row)
    return out


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def compile_product() -> dict[str, Any]:
    """Bytecode for the product's packages, as a regular pip install leaves it.

    Here the environment sets PYTHONDONTWRITEBYTECODE, so without this every
    daemon and CLI start would recompile microstackd from source (~15 ms per
    CLI command, ~1 MB per daemon): not what an installed product pays.
    """
    repo = Path(__file__).resolve().parent.parent
    dirs = [repo / "daemon" / "microstackd", repo / "client" / "microstackctl"]
    dirs.append(repo / "protos" / "microstack_api")
    ok = all(compileall.compile_dir(d, quiet=1) for d in dirs)
    return {
        "compiled": ok,
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", ""),
    }


def choose(quick: bool, parts_arg: str = "", scale: str = "") -> tuple[Plan, list[str]]:
    """The plan and the parts for ``--quick``, ``--parts``, ``--scale``
    (ValueError naming an unknown part)."""
    plan = QUICK if quick else FULL
    if scale:
        plan = dataclasses.replace(plan, scale=tuple(int(n) for n in scale.split(",")))
    chosen = parts_arg or ",".join(QUICK_PARTS if quick else PART_NAMES)
    parts = [p.strip() for p in chosen.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PART_NAMES))
    if unknown:
        raise ValueError(f"unknown parts {unknown}: choose from {list(PART_NAMES)}")
    return plan, parts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=100 and fewer repetitions")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results.json", help="JSON file"
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the control into DIR (collapsed stacks)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the daemons' directories")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        help=f"draw the scale growth into this SVG (default for a full run: {DEFAULT_PLOT})",
    )
    parser.add_argument(
        "--parts",
        default="",
        help=f"comma-separated subset of {','.join(PART_NAMES)} "
        f"(default: all; with --quick: {','.join(QUICK_PARTS)})",
    )
    parser.add_argument(
        "--scale", default="", help="comma-separated N values instead of the plan's (e.g. 2000)"
    )
    args = parser.parse_args()
    try:
        plan, parts = choose(args.quick, args.parts, args.scale)
    except ValueError as exc:
        parser.error(str(exc))
    if args.parts and "cloud" in parts:  # named: say at once what it lacks
        try:
            cloud.check()
        except cloud.Missing as exc:
            parser.error(str(exc))
    if args.profile and shutil.which(phases.tool("py-spy")) is None:
        parser.error("--profile samples with py-spy: install it (.venv/bin/pip install py-spy)")

    nofile = raise_nofile()
    bytecode = compile_product()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    root = Path(tempfile.mkdtemp(prefix="microstackd-bench-"))
    fleet = Fleet(root)
    started = time.time()
    r: dict[str, Any] = {
        "quick": args.quick,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": phases.machine(),
        "rlimit_nofile": list(nofile),
        "bytecode": bytecode,
        "plan": dataclasses.asdict(plan),
        "parts": parts,
    }
    failure: BaseException | None = None
    try:
        run_all(fleet, plan, r, args.profile.absolute() if args.profile else None, parts)
    except BaseException as exc:  # (Ctrl-C, SIGTERM) report what was measured, then fail
        failure = exc
        r["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        log("stopping every daemon and helper this run started")
        leftovers = fleet.close()
        if "cloud" in parts and os.geteuid() == 0:
            try:
                cloud.reap()  # the part's own teardown did it, unless it was cut short there
            except Exception as exc:  # reported, the rest of the clean-up still runs
                log(f"reaping the cloud part's namespaces failed: {exc}")
        signal.signal(signal.SIGINT, previous)
        r["cleanup"] = {
            "daemons_started": len(fleet.daemons),
            "daemons_alive_after": [d.name for d in fleet.daemons if d.alive()],
            "service_processes_killed_as_leftovers": leftovers,
        }
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    r["seconds"] = round(time.time() - started, 1)
    r["machine"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2) + "\n")
    plot_to = args.plot or (None if args.quick else DEFAULT_PLOT)
    if plot_to is not None and len(r.get("scale", [])) >= 2:
        plot.write(r, plot_to)
        print(f"plot: {plot_to}")
    try:
        print(report.table(r))
    except (KeyError, TypeError, ValueError) as exc:  # a part failed: its figures are missing
        print(f"(no complete table: {type(exc).__name__} {exc}; see {args.out})")
    print(f"\nresults: {args.out}   ({r['seconds']} s)")
    for name, error in r.get("part_errors", {}).items():
        print(f"{name} failed: {error}", file=sys.stderr)
    if failure is not None:
        print(f"\nbenchmark stopped early: {r['error']}", file=sys.stderr)
        return 1
    return 1 if r.get("part_errors") else 0


if __name__ == "__main__":
    sys.exit(main())
