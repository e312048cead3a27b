"""The real cloud's clock: ``microstackctl init --role control`` with the
real OpenStack services, in a network namespace, timed step by step.

    sudo .venv/bin/python -m bench.control_init [--runs 3] [--out FILE]

Each run brings up one control node in namespaces of its own (the e2e
harness, ``sandbox/netns.py``), runs a whole init, and tears it down. It
reports the init's wall time and each step's: from its ``running`` event to
its ``done`` as the CLI receives them (``--format json``), with the load
average at the start. Steps that run at once (a group of init's order,
docs/architecture.md) overlap: their durations add up to more than the wall.
Needs root and the OpenStack environment (``sandbox/openstack_env.py``).

``--kill-in STEP --kill-after S``: S seconds into STEP the daemon is
SIGKILLed (after counting the tables of each database, to show what a
migration had done), started again and the init resumed; the run reports
the resumed init's steps, whether it finished, and the log lines microstackd
wrote into STEP's log (a migration redone on empty databases says so).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sandbox.netns import MICROSTACKCTL, Host, Network, reap
from sandbox.netns import PREFIX as NETNS_PREFIX
from sandbox.openstack_env import PREFIX

from microstackd.node import testimage
from microstackd.node.roles.control import MARIADB_CNF

PASSWORD = "bench-control-init-password"


def _tables(control: Any) -> dict[str, int]:
    """Each OpenStack database's number of tables, now."""
    done = control.run(
        ["/usr/bin/mariadb", f"--defaults-file={control.workdir / 'etc' / MARIADB_CNF}",
         "-N", "-e", "SELECT table_schema, COUNT(*) FROM information_schema.tables "
         "WHERE table_schema NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') "
         "GROUP BY table_schema"],
    )  # fmt: skip
    if done.returncode != 0:
        return {"error": done.returncode}
    return {db: int(n) for db, n in (line.split("\t") for line in done.stdout.splitlines())}


def init_argv(control: Host, password_file: Path) -> list[str]:
    """``microstackctl init --role control`` on ``control``, its events as JSON lines."""
    assert control.socket is not None
    return [MICROSTACKCTL, "--socket", str(control.socket), "init", "--role", "control",
            "--address", control.address, "--password-file", str(password_file),
            "--format", "json"]  # fmt: skip


def _events(proc: subprocess.Popen[str], started: float, on_running: Any = None) -> dict[str, Any]:
    began: dict[str, float] = {}
    took: dict[str, float] = {}
    last: dict[str, Any] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        now = time.monotonic() - started
        event = json.loads(line)
        last = event
        step, state = event["step"], event["state"]
        if state == "running":
            if step not in began and on_running is not None:
                on_running(step)
            began.setdefault(step, now)
        elif state in ("done", "skipped", "failed") and step in began:
            took[step] = round(now - began[step], 2)
    return {"began": began, "took": took, "last": last}


def killed_run(workdir: Path, step: str, after: float) -> dict[str, Any]:
    """An init SIGKILLed ``after`` s into ``step``, the daemon started again,
    the init resumed."""
    password_file = workdir / "pw.txt"
    password_file.write_text(PASSWORD + "\n")
    network = Network(workdir / "net")
    try:
        control = network.add_host("control")
        extra = ["--openstack-prefix", str(PREFIX)]
        control.start_daemon("control", extra_args=extra)
        assert control.socket is not None and control.state_dir is not None
        argv = init_argv(control, password_file)
        load = os.getloadavg()
        started = time.monotonic()
        at_kill: dict[str, Any] = {}

        def kill() -> None:
            at_kill["tables"] = _tables(control)
            at_kill["at_s"] = round(time.monotonic() - started, 1)
            control.stop_daemon(signal.SIGKILL)

        def on_running(name: str) -> None:
            if name == step:
                threading.Timer(after, kill).start()

        first = _events(control.popen(argv, stdout=subprocess.PIPE, text=True), started, on_running)
        unfinished = sorted(set(first["began"]) - set(first["took"]))
        control.start_daemon("control", extra_args=extra)
        resumed = _events(control.popen(argv, stdout=subprocess.PIPE, text=True), started)
        log = control.state_dir / "logs" / f"setup-{step}.log"
        marks = [ln for ln in log.read_text(errors="replace").splitlines() if "[microstackd]" in ln]
        return {
            "load_1m_at_start": round(load[0], 2),
            "killed_at_s": at_kill.get("at_s"),
            "tables_at_kill": at_kill.get("tables"),
            "unfinished_at_kill": unfinished,
            "resumed_steps": sorted(resumed["began"]),
            "resumed_final": [resumed["last"].get(k) for k in ("step", "state", "message")],
            "init_s": round(time.monotonic() - started, 1),
            "step_log_marks": marks,
        }
    finally:
        network.close()


class InitFailed(RuntimeError):
    """An init that ended in a failed step (its step and message)."""


def timed_init(control: Host, password_file: Path) -> dict[str, Any]:
    """A whole ``init --role control`` on ``control`` (its daemon started):
    the wall time, each step's, the load at the start. Raises ``InitFailed``."""
    load = os.getloadavg()
    started = time.monotonic()
    proc = control.popen(init_argv(control, password_file), stdout=subprocess.PIPE, text=True)
    seen = _events(proc, started)
    began, took, last = seen["began"], seen["took"], seen["last"]
    proc.wait(60)
    wall = round(time.monotonic() - started, 1)
    if last.get("state") != "done":
        raise InitFailed(f"init failed at {last.get('step')}: {last.get('message')}")
    return {
        "init_s": wall,
        "load_1m_at_start": round(load[0], 2),
        "steps_s": took,
        "started_at_s": {s: round(t, 2) for s, t in began.items()},
    }


def one_run(workdir: Path) -> dict[str, Any]:
    password_file = workdir / "pw.txt"
    password_file.write_text(PASSWORD + "\n")
    network = Network(workdir / "net")
    try:
        control = network.add_host("control")
        control.start_daemon("control", extra_args=["--openstack-prefix", str(PREFIX)])
        return timed_init(control, password_file)
    except InitFailed as exc:
        raise SystemExit(str(exc)) from None
    finally:
        network.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the runs here as JSON")
    parser.add_argument("--kill-in", metavar="STEP", help="SIGKILL the daemon inside STEP")
    parser.add_argument("--kill-after", type=float, default=2.0, metavar="S")
    args = parser.parse_args(argv)
    testimage.build()  # the namespace has no route to Debian's archive
    if args.kill_in:
        try:
            with tempfile.TemporaryDirectory(prefix="bench-control-init-") as tmp:
                result = killed_run(Path(tmp), args.kill_in, args.kill_after)
        finally:
            reap(NETNS_PREFIX)
        print(json.dumps(result, indent=1))
        if args.out:
            args.out.write_text(json.dumps(result, indent=1) + "\n")
        return 0 if result["resumed_final"][1] == "done" else 1
    runs = []
    try:
        for index in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="bench-control-init-") as tmp:
                result = one_run(Path(tmp))
            runs.append(result)
            print(f"run {index + 1}: init {result['init_s']} s "
                  f"(load {result['load_1m_at_start']})", flush=True)  # fmt: skip
            for step, seconds in sorted(result["steps_s"].items(), key=lambda kv: -kv[1])[:12]:
                print(f"  {seconds:7.2f} s  {step}")
    finally:
        reap(NETNS_PREFIX)
    walls = [r["init_s"] for r in runs]
    summary = {
        "min_s": min(walls),
        "median_s": statistics.median(walls),
        "max_s": max(walls),
        "runs": runs,
    }
    print(f"init: min {summary['min_s']} s, median {summary['median_s']} s, "
          f"max {summary['max_s']} s over {len(walls)} run(s)")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
