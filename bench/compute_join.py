"""The real cloud's clock: a compute's ``microstackctl join`` with its real
services (Open vSwitch, neutron-openvswitch-agent, libvirtd, nova-compute),
timed step by step.

    sudo .venv/bin/python -m bench.compute_join [--runs 3] [--at-once 1] [--out FILE]

One control node is brought up in namespaces of its own (the e2e harness,
``sandbox/netns.py``: the same ``init --role control`` as
``bench/control_init.py``), then each run adds ``--at-once`` fresh computes
and has them join at once with the password, as the real-cloud suite does
(tests/e2e/test_openstack.py: two). A run's computes are stopped before the
next run starts, so that each run's join has the same control to talk to.

For every join it reports the CLI's wall time and, from the control's own
record of the enrolment (its store's events, to the microsecond), when each
of the control's steps began and how long it took (admit, issue-config,
configure-node, admit-to-cloud, done), the compute's own role steps as the
agent streamed them into configure-node (render-config, the Open vSwitch
steps, each service: from its first message to its last), and within
admit-to-cloud each wait (nova-compute's service record up, the cell
mapping, the hypervisor, Placement's resources, the OVS agent alive with its
tunnel address) and the control's own tunnel check (control/tunnels.py).
Times are seconds after the CLI started. Needs root and the OpenStack
environment (``sandbox/openstack_env.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.control_init import PASSWORD, InitFailed, timed_init
from sandbox.netns import PREFIX as NETNS_PREFIX
from sandbox.netns import Host, Network, join, reap
from sandbox.openstack_env import PREFIX

from microstackd.enrolment import machine as enrolment
from microstackd.node import testimage

#: A wait of admit-to-cloud that ended (cloud/session.py's ``wait``).
WAITED = re.compile(r"^(?P<what>.+?): .* after \d+ s$")
#: A role step of the compute's, as configure-node forwards it ("STEP: message").
ROLE_STEP = re.compile(r"^(?P<step>render-config|service [\w-]+|[a-z][\w-]*): ")


def _store_events(control: Host, node: str) -> list[tuple[float, str, str, str]]:
    """(time, step, state, message) of ``node``'s enrolment, from the control's store."""
    assert control.state_dir is not None
    uri = f"file:{control.state_dir / 'microstackd.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        rows = db.execute(
            "SELECT time, step, state, message FROM events WHERE node = ? ORDER BY seq", (node,)
        ).fetchall()
    return [(float(t), str(s), str(st), str(m)) for t, s, st, m in rows]


def timeline(events: list[tuple[float, str, str, str]], started: float) -> dict[str, Any]:
    """Each enrolment step's start and duration, the compute's role steps
    inside configure-node, the waits inside admit-to-cloud (s after ``started``)."""
    steps: dict[str, list[float]] = {}
    role: dict[str, list[float]] = {}
    waits: dict[str, float] = {}
    for at, step, _state, message in events:
        t = round(at - started, 2)
        span = steps.setdefault(step, [t, t])
        span[1] = t
        if step == enrolment.CONFIGURE_NODE:
            found = ROLE_STEP.match(message)
            if found and found["step"] != "waiting for the agent of":
                r = role.setdefault(found["step"], [t, t])
                r[1] = t
        elif step == enrolment.ADMIT_TO_CLOUD:
            done = WAITED.match(message)
            if done and not message.startswith("waiting for"):
                waits.setdefault(done["what"], t)
    admit = steps.get(enrolment.ADMIT_TO_CLOUD)
    if admit is not None and waits:
        # The last wait's end to the step's: the control's own tunnel check.
        waits["the control's tunnel check (control/tunnels.py)"] = admit[1]
    return {
        "steps": {s: {"at": a, "took": round(b - a, 2)} for s, (a, b) in steps.items()},
        "role_steps": {s: {"at": a, "took": round(b - a, 2)} for s, (a, b) in role.items()},
        "admit_waits_done_at": waits,
    }


def bring_up_control(network: Network, password_file: Path) -> tuple[Host, float]:
    control = network.add_host("control")
    control.start_daemon("control", extra_args=["--openstack-prefix", str(PREFIX)])
    try:
        return control, timed_init(control, password_file)["init_s"]
    except InitFailed as exc:
        raise SystemExit(f"control {exc}") from None


def one_run(
    network: Network,
    control: Host,
    password_file: Path,
    index: int,
    at_once: int,
    keep: dict[str, Host] | None = None,
) -> list[dict[str, Any]]:
    """``at_once`` fresh computes joining at once; stopped afterwards unless
    ``keep`` is given (then they are put there, by node name, still running)."""
    hosts = {}
    for k in range(at_once):
        name = f"cj{index}-{k + 1}"
        host = network.add_host(name.replace("-", ""))
        host.start_daemon(name, extra_args=["--openstack-prefix", str(PREFIX)])
        hosts[name] = host
    load = os.getloadavg()[0]
    results: dict[str, dict[str, Any]] = {}

    def joiner(name: str, host: Host) -> None:
        started = time.time()
        out = join(host, control, password_file, False, 900)
        wall = round(time.time() - started, 1)
        results[name] = {
            "node": name,
            "join_s": wall,
            "ok": out.returncode == 0,
            "tail": out.stdout.strip().splitlines()[-1:] + out.stderr.strip().splitlines()[-3:],
            "load_1m_at_start": round(load, 2),
            **timeline(_store_events(control, name), started),
        }

    threads = [threading.Thread(target=joiner, args=item) for item in hosts.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if keep is not None:
        keep.update(hosts)
    else:
        for host in hosts.values():
            host.close()  # its services stop: the next run's control is as unloaded
    return [results[n] for n in hosts]


def _print(result: dict[str, Any]) -> None:
    print(f"  {result['node']}: join {result['join_s']} s, ok={result['ok']} "
          f"(load {result['load_1m_at_start']})")  # fmt: skip
    if not result["ok"]:
        print("    " + "\n    ".join(result["tail"]))
    for step, span in result["steps"].items():
        print(f"    {span['at']:6.2f} s  +{span['took']:6.2f} s  {step}")
        if step == enrolment.CONFIGURE_NODE:
            for name, rs in result["role_steps"].items():
                print(f"      {rs['at']:6.2f} s  +{rs['took']:6.2f} s  {name}")
        if step == enrolment.ADMIT_TO_CLOUD:
            for what, at in result["admit_waits_done_at"].items():
                print(f"      done at {at:6.2f} s  {what}")


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": round(statistics.median(values), 2), "max": max(values)}


def summarise(joins: list[dict[str, Any]]) -> dict[str, Any]:
    walls = [j["join_s"] for j in joins]
    per_step: dict[str, list[float]] = {}
    for j in joins:
        for step, span in j["steps"].items():
            per_step.setdefault(step, []).append(span["took"])
        for step, span in j["role_steps"].items():
            per_step.setdefault("  " + step, []).append(span["took"])
    return {
        "join_s": _spread(walls),
        "steps_took_s": {s: _spread(v) for s, v in per_step.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--at-once", type=int, default=1, help="computes joining at once per run")
    parser.add_argument("--out", type=Path, help="write the joins and their summary as JSON")
    args = parser.parse_args(argv)
    testimage.build()  # the namespace has no route to Debian's archive
    joins: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-compute-join-") as tmp:
            work = Path(tmp)
            password_file = work / "pw.txt"
            password_file.write_text(PASSWORD + "\n")
            network = Network(work / "net")
            try:
                control, init_s = bring_up_control(network, password_file)
                print(f"control init {init_s} s", flush=True)
                for index in range(1, args.runs + 1):
                    print(f"run {index}:", flush=True)
                    for result in one_run(network, control, password_file, index, args.at_once):
                        joins.append(result)
                        _print(result)
                    sys.stdout.flush()
            finally:
                network.close()
    finally:
        reap(NETNS_PREFIX)
    ok = [j for j in joins if j["ok"]]
    summary = summarise(ok) if ok else {}
    if ok:
        s = summary["join_s"]
        failed = len(joins) - len(ok)
        print(f"join ({args.at_once} at once): min {s['min']} s, median {s['median']} s, "
              f"max {s['max']} s over {len(ok)} join(s), {failed} failed")  # fmt: skip
        for step, spread in summary["steps_took_s"].items():
            print(f"  {step:40s} min {spread['min']:6.2f}  median {spread['median']:6.2f}  "
                  f"max {spread['max']:6.2f} s")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "joins": joins}, indent=1) + "\n")
    return 0 if ok and len(ok) == len(joins) else 1


if __name__ == "__main__":
    sys.exit(main())
