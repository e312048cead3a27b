"""Real microstackd processes on loopback for the benchmarks.

Every process started here is registered with a ``Fleet`` and stopped by
``Fleet.close()`` (the benchmark calls it in a ``finally``, and on SIGTERM /
SIGINT / SIGHUP). Daemons run in their own session; their role services run
in sessions of their own, so after each daemon has stopped the fleet also
looks for service processes carrying the process manager's marker
(``MICROSTACKD_SERVICE=<a path under this fleet's directory>``) and stops
them by pid. Nothing outside the fleet's directory is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_MARK = b"msg=ready"


def tool(name: str) -> str:
    """The venv's copy of a console script, else the one on PATH."""
    local = BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed (pip install -e . into the venv)")
    return found


def free_port_pair(host: str) -> int:
    """A port p such that p and p+1 are free on ``host`` (best effort)."""
    for _ in range(100):
        with socket.socket() as a:
            a.bind((host, 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind((host, port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port pair on {host}")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# --- /proc ---------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM, ...), or a count (Threads)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise KeyError(key)


def rss_mb(pid: int) -> float:
    return status_kb(pid, "VmRSS") / 1024.0


def hwm_mb(pid: int) -> float:
    return status_kb(pid, "VmHWM") / 1024.0


def rss_split_mb(pid: int) -> dict[str, float]:
    """Resident memory by kind: anonymous (the process's own), file-backed
    (shared libraries and mapped files, shared with other processes), shmem;
    and PSS (shared pages divided among the processes sharing them)."""
    split = {
        key: round(status_kb(pid, f"Rss{key.capitalize()}") / 1024.0, 1)
        for key in ("anon", "file", "shmem")
    }
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "Pss":
            split["pss"] = round(int(value.split()[0]) / 1024.0, 1)
    return split


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def service_leftovers(root: Path) -> list[int]:
    """Pids of role services started by this fleet's daemons that are still alive."""
    marker = f"MICROSTACKD_SERVICE={root}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            if marker in _environ(int(entry.name)):
                found.append(int(entry.name))
    return found


# --- daemons -------------------------------------------------------------------------------------


class Daemon:
    """One microstackd, started by ``Fleet.daemon``."""

    def __init__(
        self, name: str, host: str, port: int, root: Path, extra: Sequence[str] = ()
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.root = root
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_seconds = 0.0
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def socket(self) -> Path:
        return self.root / "microstackd.sock"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def log(self) -> Path:
        return self.root / "microstackd.log"

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def cluster_port(self) -> int:
        return self.port + 1

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Daemon:
        """Start the daemon and wait for its ``msg=ready`` log line."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._ready.clear()
        argv = [
            tool("microstackd"),
            "--state-dir",
            str(self.state_dir),
            "--socket",
            str(self.socket),
            "--listen",
            self.endpoint,
            "--node-name",
            self.name,
            "--service-manager",
            "process",
            "--config-root",
            str(self.root / "etc"),
            *self.extra,
        ]
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stderr is not None
        self._reader = threading.Thread(
            target=self._read_log, args=(self.proc.stderr, started), daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not become ready; its log:\n{self.log.read_text()[-3000:]}"
                )
        return self

    def _read_log(self, stream: IO[bytes], started: float) -> None:
        with open(self.log, "ab") as out:
            for line in stream:
                if not self._ready.is_set() and READY_MARK in line:
                    self.ready_seconds = time.perf_counter() - started
                    self._ready.set()
                out.write(line)
                out.flush()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def hwm_mb(self) -> float:
        return hwm_mb(self.pid)

    def rss_split_mb(self) -> dict[str, float]:
        return rss_split_mb(self.pid)

    def threads(self) -> int:
        return status_kb(self.pid, "Threads")

    def ctl_argv(self, *args: str) -> list[str]:
        return [tool("microstackctl"), "--socket", str(self.socket), *args]

    def ctl(self, *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.ctl_argv(*args), capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"microstackctl {' '.join(args)} exited {result.returncode}: "
                f"{result.stdout}{result.stderr}\n--- daemon log ---\n"
                f"{self.log.read_text()[-3000:]}"
            )
        return result

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the daemon stops its services), then SIGKILL if it hangs."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)


class Fleet:
    """Owns every process the benchmark starts, and stops them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.daemons: list[Daemon] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    def daemon(
        self,
        name: str,
        host: str,
        *,
        port: int = 0,
        root: Path | None = None,
        extra: Sequence[str] = (),
        start: bool = True,
    ) -> Daemon:
        d = Daemon(name, host, port or free_port_pair(host), root or self.root / name, extra)
        with self._lock:
            self.daemons.append(d)
        return d.start() if start else d

    def spawn(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """A helper process (load generator, reference server) stopped by close()."""
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            list(argv), start_new_session=True, **kwargs
        )
        with self._lock:
            self.workers.append(proc)
        return proc

    def stop_daemons(self, daemons: Sequence[Daemon]) -> None:
        """Stop several daemons in parallel."""
        threads = [threading.Thread(target=d.stop) for d in daemons]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def close(self) -> list[int]:
        """Stop everything; return the pids that had to be killed as leftovers."""
        for proc in self.workers:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        self.stop_daemons(self.daemons)
        for proc in self.workers:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        roots = {self.root, *(d.root for d in self.daemons)}
        leftovers = sorted({pid for root in roots for pid in service_leftovers(root)})
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return leftovers
