"""``microstackctl status`` by grpcio and by ``unary.py``, alternated.

    .venv/bin/python bench/status_transports.py OLD_TREE [--runs 20] [--nodes 3]

OLD_TREE is a checkout whose ``client/`` still calls Status with grpcio
(``git archive 1c608a8 client protos | tar -x -C /tmp/cli-old``); its
``client`` and ``protos`` go first on PYTHONPATH for the "grpcio" runs,
this tree's for the others. A control is started and ``--nodes - 1``
simulated computes joined (``phases.concurrent_joins``); then the table,
the JSON and ``import microstackctl.cmd_status`` are timed, one of each
transport in turn, and the medians (min) printed with ``uptime``.
Bytecode is compiled for both trees first. Every daemon stops at the end.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import phases
from fleet import Fleet

REPO = Path(__file__).resolve().parent.parent


def timed(env: dict[str, str], argv: list[str]) -> tuple[float, bytes]:
    started = time.perf_counter()
    run = subprocess.run(argv, env=env, capture_output=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {run.returncode}: {run.stderr.decode()}")
    return (time.perf_counter() - started) * 1000, run.stdout


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    for tree in (args.old, REPO):
        for part in ("client", "protos"):
            compileall.compile_dir(str(tree / part), quiet=1)
    old_path = f"{args.old / 'client'}:{args.old / 'protos'}"
    envs = {
        "grpcio": {**os.environ, "PYTHONPATH": old_path},
        "unary": {**os.environ, "PYTHONPATH": f"{REPO / 'client'}:{REPO / 'protos'}"},
    }
    fleet = Fleet(Path(tempfile.mkdtemp(prefix="microstackd-status-transports-")))
    try:
        password = phases.write_password(fleet.root)
        ctl, _ = phases.start_control(fleet, "ctl-status", password)
        secret, _ = phases.secret_for(ctl)
        joined = phases.concurrent_joins(fleet, ctl, secret, args.nodes - 1, 2, None)
        if joined["errors"]:
            phases.top_up(fleet, ctl, secret, args.nodes - 1)
        print(uptime())
        cases = {
            "status": ctl.ctl_argv("status"),
            "status --format json": ctl.ctl_argv("status", "--format", "json"),
            "import cmd_status": [sys.executable, "-c", "import microstackctl.cmd_status"],
        }
        for label, argv in cases.items():
            outputs = {name: timed(env, argv)[1] for name, env in envs.items()}  # warm
            same = outputs["grpcio"] == outputs["unary"]  # the table's ages may tick
            times: dict[str, list[float]] = {name: [] for name in envs}
            for _ in range(args.runs):
                for name, env in envs.items():
                    times[name].append(timed(env, argv)[0])
            figures = "  ".join(
                f"{name} {statistics.median(t):.1f} ms ({min(t):.1f})" for name, t in times.items()
            )
            print(f"{label}: {figures}  (same output: {same})", flush=True)
        print(uptime())
    finally:
        fleet.close()


if __name__ == "__main__":
    main()
