"""LXD 5.0's token join beside ours, in one run (the part ``lxd`` of run.py).

The method of ../shared/peers/lxd/side_by_side.py, run by our own code:

* LXD: two daemons in a loopback-only network namespace made for this run;
  member B joins A with a token (``lxc cluster add b`` on A) through
  ``lxd init --preseed`` on B, timed from start to exit; then B is stopped,
  removed from A's cluster and wiped, for the next join.
* ours: ``microstackctl join --token`` (``add-node`` on the control first,
  not timed) and ``microstackctl join CONTROL --password-file F``, each on a
  fresh compute daemon (process manager, stand-in services), against one
  control; the KDF's own time with that control's parameters, too.

The three joins are interleaved round by round, so the machine's load moves
all three alike; the first round warms caches and is dropped. Compare the
ratios, not the absolute figures (they move by ±30 % with the load).

Needs root, ``ip`` (iproute2) and LXD (Debian 12: ``apt-get install lxd``);
``missing()`` says what is absent, and the part fails saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import phases
from fleet import Fleet
from stats import summary_ms

#: LXD's address inside the namespace (A; B is .2), its HTTPS port.
LXD_A, LXD_B, LXD_PORT = "127.0.0.1", "127.0.0.2", 18443
LXD_A_PRESEED = f"""config:
  core.https_address: {LXD_A}:{LXD_PORT}
cluster:
  server_name: a
  enabled: true
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  devices:
    root:
      path: /
      pool: default
      type: disk
networks: []
"""


def missing() -> list[str]:
    """What this part needs and does not find, as instructions."""
    needs = []
    if os.geteuid() != 0:
        needs.append("root (LXD and network namespaces)")
    if shutil.which("ip") is None:
        needs.append("iproute2 (`apt-get install iproute2`)")
    if shutil.which("lxd") is None or shutil.which("lxc") is None:
        needs.append("LXD 5.0 (`apt-get install lxd`, Debian 12)")
    return needs


def _run(argv: list[str], env: dict[str, str], stdin: str = "", timeout: float = 120) -> str:
    result = subprocess.run(
        argv, env=env, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr[-500:]}")
    return result.stdout


class LxdPair:
    """LXD daemons A (a one-member cluster) and B (joined, then reset), in a
    network namespace of their own that only has loopback."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.root = fleet.root / "lxd"
        self.netns = f"msbench-lxd-{os.getpid()}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _dir(self, name: str) -> Path:
        return self.root / name

    def env(self, name: str) -> dict[str, str]:
        return {**os.environ, "LXD_DIR": str(self._dir(name))}

    def _in_netns(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def version(self) -> str:
        return _run(["lxd", "--version"], dict(os.environ)).strip()

    def start(self) -> None:
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        subprocess.run(["ip", "-n", self.netns, "link", "set", "lo", "up"], check=True)
        subprocess.run(
            ["ip", "-n", self.netns, "addr", "add", f"{LXD_B}/8", "dev", "lo"],
            check=True,
            capture_output=True,
        )
        self._start_daemon("a")
        _run(self._in_netns(["lxd", "init", "--preseed"]), self.env("a"), LXD_A_PRESEED)

    def _start_daemon(self, name: str) -> None:
        path = self._dir(name)
        path.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{name}.out", "ab") as out:
            self.procs[name] = self.fleet.spawn(
                self._in_netns(["lxd", "--group", "root", "--logfile", f"{path}.log"]),
                env=self.env(name),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _run(["lxd", "waitready", "--timeout", "60"], self.env(name))

    def _stop_daemon(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def _wipe(self, name: str) -> None:
        for mount in ("shmounts", "devlxd"):
            subprocess.run(["umount", "-l", str(self._dir(name) / mount)], capture_output=True)
        shutil.rmtree(self._dir(name), ignore_errors=True)

    def join(self) -> float:
        """One token join of B into A's cluster: the wall time of B's
        ``lxd init --preseed``, in seconds; B is reset afterwards."""
        self._start_daemon("b")
        try:
            added = _run(["lxc", "cluster", "add", "b"], self.env("a"))
            token = added.strip().splitlines()[-1]
            preseed = (
                f"cluster:\n  enabled: true\n  server_name: b\n"
                f"  server_address: {LXD_B}:{LXD_PORT}\n  cluster_token: {token}\n"
            )
            started = time.perf_counter()
            _run(self._in_netns(["lxd", "init", "--preseed"]), self.env("b"), preseed)
            seconds = time.perf_counter() - started
        finally:
            self._stop_daemon("b")
        _run(["lxc", "cluster", "remove", "b", "--force", "--yes"], self.env("a"))
        self._wipe("b")
        return seconds

    def cluster_list(self) -> float:
        started = time.perf_counter()
        _run(["lxc", "cluster", "list"], self.env("a"))
        return time.perf_counter() - started

    def close(self) -> None:
        for name in list(self.procs):
            self._stop_daemon(name)
        for name in ("a", "b"):
            self._wipe(name)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)


def side_by_side(
    fleet: Fleet, password_file: Path, rounds: int, list_repeats: int
) -> dict[str, Any]:
    """``rounds`` joins each (after one warm-up round): LXD's with a token,
    ours with a token and with the password; plus the KDF, and listing the
    cluster both ways."""
    needs = missing()
    if needs:
        raise RuntimeError(
            "the lxd part needs " + "; ".join(needs) + " (then: bench/run.py --parts lxd)"
        )
    ctl, _ = phases.start_control(fleet, "ctl-lxd", password_file)
    where = f"{phases.CONTROL_HOST}:{ctl.port}"
    secret, _ = phases.secret_for(ctl)
    lxd = LxdPair(fleet)
    samples: dict[str, list[float]] = {"lxd_token": [], "ours_token": [], "ours_password": []}
    try:
        lxd.start()
        version = lxd.version()
        for i in range(rounds + 1):
            measured = {"lxd_token": lxd.join()}
            name, address = f"lxd-tok-{i:02d}", f"127.0.5.{i + 1}"
            node = fleet.daemon(name, address)
            token = json.loads(ctl.ctl("add-node", name, "--format", "json").stdout)["token"]
            run = phases.run_cli(node.ctl_argv("join", "--token", token, "--address", address))
            _check(run, name)
            measured["ours_token"] = run.seconds
            node.stop()
            name, address = f"lxd-pw-{i:02d}", f"127.0.6.{i + 1}"
            node = fleet.daemon(name, address)
            argv = ["join", where, "--password-file", str(password_file), "--address", address]
            run = phases.run_cli(node.ctl_argv(*argv))
            _check(run, name)
            measured["ours_password"] = run.seconds
            node.stop()
            if i:  # the first round warms caches
                for key, seconds in measured.items():
                    samples[key].append(seconds)
            phases.log(
                f"   lxd round {i}{' (warm-up)' if not i else ''}: "
                + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in measured.items())
            )
        lxc_list = [lxd.cluster_list() for _ in range(list_repeats)]
        ours_status = phases.cli_times(ctl.ctl_argv("status"), list_repeats)
    finally:
        lxd.close()
        ctl.stop()
    kdf = phases.kdf_time(secret, 5)
    result: dict[str, Any] = {
        "lxd_version": version,
        "rounds": rounds,
        "kdf": kdf,
        "lxc_cluster_list": summary_ms(lxc_list),
        "microstackctl_status": summary_ms(ours_status),
        **{key: summary_ms(values) for key, values in samples.items()},
        "samples_ms": {k: [round(v * 1000, 1) for v in vs] for k, vs in samples.items()},
    }
    lxd_p50 = result["lxd_token"]["p50_ms"]
    result["token_ratio"] = round(result["ours_token"]["p50_ms"] / lxd_p50, 2)
    result["password_ratio"] = round(result["ours_password"]["p50_ms"] / lxd_p50, 2)
    # Per round, so that a load spike moves both sides of each ratio.
    result["token_ratio_per_round_p50"] = _median_ratio(samples["ours_token"], samples["lxd_token"])
    result["password_ratio_per_round_p50"] = _median_ratio(
        samples["ours_password"], samples["lxd_token"]
    )
    return result


def _median_ratio(ours: list[float], theirs: list[float]) -> float:
    ratios = sorted(a / b for a, b in zip(ours, theirs, strict=True))
    middle = len(ratios) // 2
    median = ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2
    return round(median, 2)


def _check(run: phases.CliRun, name: str) -> None:
    if run.returncode != 0:
        raise RuntimeError(
            f"join of {name} exited {run.returncode}: {run.stderr.decode()}"
            f"{b''.join(line for _, line in run.lines).decode()}"
        )
