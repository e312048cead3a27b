"""The real cloud's clock (the part ``cloud`` of run.py): control init, a
compute's join, launch → ssh login, with the real OpenStack services.

Each init brings up one control node in namespaces of its own (the e2e
harness, ``sandbox/netns.py``) and times a whole ``init --role control``
step by step (bench/control_init.py's ``timed_init``). The last init's
control then takes the joins, one at a time, each of a fresh compute
(bench/compute_join.py's ``one_run``: the CLI's wall time and the control's
record of each step); every compute but the last is stopped after its join.
On that last compute the guests are launched with ``microstackctl launch``
and logged into once with the ssh line it printed (sandbox/guests.py, the
same code the real-cloud suite runs): the first launch on the compute is
cold (its image cache empty), the next ones warm; each guest is deleted
before the next launch. Every sample carries the 1-minute load average at
its start; each figure is summarised as min / median / max.

Needs root, network namespaces and the OpenStack environment
(``sandbox/openstack_env.py``); ``missing()`` says what is absent and how
to install it. Everything started is stopped at the end, also on error,
SIGINT or SIGTERM (``Network.close`` and ``reap`` of this run's namespaces).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: sandbox/, bench.

from bench.compute_join import one_run as join_run  # noqa: E402
from bench.control_init import PASSWORD, InitFailed, timed_init  # noqa: E402
from sandbox import guests, netns, openstack_env  # noqa: E402
from sandbox.netns import Host, Network  # noqa: E402

from microstackd.node import testimage  # noqa: E402

#: The goals of issue 19 (docs/performance.md), seconds.
GOALS = {"control_init_s": 90.0, "join_s": 20.0, "launch_warm_s": 30.0}
#: The figures summarised, in the order they are reported.
FIGURES = ("control_init_s", "join_s", "launch_cold_s", "launch_warm_s")


@dataclass(frozen=True)
class CloudPlan:
    inits: int
    joins: int
    #: Launches after the cold one, on the same compute.
    warm_launches: int


def missing(prefix: Path | None = None) -> list[str]:
    """What this part needs and does not find, each with how to get it."""
    prefix = openstack_env.PREFIX if prefix is None else prefix
    if os.geteuid() != 0:
        return [
            "root: the real cloud runs in network namespaces "
            "(sudo .venv/bin/python bench/run.py --parts cloud ...)"
        ]
    needs = []
    reason = netns.unavailable_reason()
    if reason is not None:
        needs.append(f"network namespaces: {reason} (Debian: apt-get install iproute2)")
    if not (prefix / "bin" / "nova-compute").exists():
        needs.append(
            f"the OpenStack environment in {prefix}: create it with "
            f"`sudo openstack/install-env.sh {prefix}` (sandbox/openstack_env.py; "
            "MICROSTACK_OPENSTACK_PREFIX chooses another place)"
        )
    return needs


class Missing(RuntimeError):
    """What the part needs and does not find, with how to install it."""


def check(prefix: Path | None = None) -> None:
    """Raise ``Missing`` unless the part can run here."""
    needs = missing(prefix)
    if needs:
        raise Missing("the cloud part needs " + "; ".join(needs))


def spread(samples: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """min / median / max of ``key`` over the samples that have it, with the
    load at each sample's start; empty when none has it."""
    taken = [s for s in samples if key in s]
    if not taken:
        return {}
    values = [float(s[key]) for s in taken]
    return {
        "n": len(values),
        "min": min(values),
        "median": round(statistics.median(values), 2),
        "max": max(values),
        "samples": values,
        "load_1m": [s["load_1m_at_start"] for s in taken],
    }


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Each figure's spread, and whether its median meets the goal."""
    sources = {
        "control_init_s": (result["inits"], "init_s"),
        "join_s": ([j for j in result["joins"] if j["ok"]], "join_s"),
        "launch_cold_s": ([g for g in result["launches"] if g["cold"]], "launch_to_login_s"),
        "launch_warm_s": ([g for g in result["launches"] if not g["cold"]], "launch_to_login_s"),
    }
    summary: dict[str, Any] = {}
    for figure in FIGURES:
        samples, key = sources[figure]
        s = spread(samples, key)
        if s and figure in GOALS:
            s["goal_s"] = GOALS[figure]
            s["median_meets_goal"] = s["median"] < GOALS[figure]
        summary[figure] = s
    return summary


def _launches(
    control: Host, home: Path, compute: Host, host: str, plan: CloudPlan, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    out = []
    for k in range(1 + plan.warm_launches):
        name = f"bench-{k}"
        load = os.getloadavg()[0]
        data, seconds = guests.launch(control, home, name, host, compute)
        started = time.monotonic()
        guests.osc(control, "server", "delete", "--wait", name)
        sample = {
            "guest": name,
            "cold": k == 0,
            "load_1m_at_start": round(load, 2),
            "launch_to_login_s": round(seconds, 1),
            "active_after_s": data["active_after_seconds"],
            "sshd_after_s": data["ssh_after_seconds"],
            "delete_s": round(time.monotonic() - started, 1),
        }
        out.append(sample)
        log(f"   launch {name} ({'cold' if k == 0 else 'warm'}): ssh login after "
            f"{sample['launch_to_login_s']} s (ACTIVE {sample['active_after_s']} s, sshd "
            f"{sample['sshd_after_s']} s; load {sample['load_1m_at_start']})")  # fmt: skip
    return out


def _joins_and_launches(
    network: Network, control: Host, work: Path, plan: CloudPlan, r: dict[str, Any],
    log: Callable[[str], None],
) -> None:  # fmt: skip
    password_file = work / "pw.txt"
    kept: dict[str, Host] = {}
    for j in range(1, plan.joins + 1):
        last = j == plan.joins
        (joined,) = join_run(network, control, password_file, j, 1, kept if last else None)
        r["joins"].append(joined)
        log(f"   join {joined['node']}: {joined['join_s']} s, ok={joined['ok']} "
            f"(load {joined['load_1m_at_start']})")  # fmt: skip
        if not joined["ok"]:
            raise RuntimeError(f"join of {joined['node']} failed: {joined['tail']}")
    ((host, compute),) = kept.items()
    home = work / "home"
    home.mkdir(exist_ok=True)
    r["launches"] = _launches(control, home, compute, host, plan, log)


def measure(plan: CloudPlan, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole part: inits, joins, launches; torn down at the end, always."""
    check()
    testimage.build()  # the namespaces have no route to Debian's archive
    r: dict[str, Any] = {"plan": plan.__dict__, "inits": [], "joins": [], "launches": []}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cloud-") as tmp:
            work = Path(tmp)
            (work / "pw.txt").write_text(PASSWORD + "\n")
            for i in range(1, plan.inits + 1):
                network = Network(work / f"net{i}")
                try:
                    control = network.add_host("control")
                    extra = ["--openstack-prefix", str(openstack_env.PREFIX)]
                    control.start_daemon("control", extra_args=extra)
                    try:
                        init = timed_init(control, work / "pw.txt")
                    except InitFailed as exc:
                        raise RuntimeError(f"control {exc}") from None
                    r["inits"].append(init)
                    log(f"   init {i}: {init['init_s']} s (load {init['load_1m_at_start']})")
                    if i == plan.inits:
                        _joins_and_launches(network, control, work, plan, r, log)
                finally:
                    network.close()
    finally:
        reap()
    r["summary"] = summarise(r)
    return r


def reap() -> list[str]:
    """Remove whatever of this run's namespaces is left (only this process's)."""
    return netns.reap(netns.PREFIX)
