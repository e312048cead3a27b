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
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: sandbox/

from sandbox import launcher  # noqa: E402
from sandbox.launcher import tool  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


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


class Daemon(launcher.Daemon):
    """One microstackd, started by ``Fleet.daemon`` through the one launcher
    (``sandbox.launcher``), with what the benchmarks read of its process."""

    def __init__(self, name: str, host: str, root: Path, extra: Sequence[str] = ()) -> None:
        super().__init__(
            name=name,
            host=host,
            state_dir=root / "state",
            socket=root / "microstackd.sock",
            config_root=root / "etc",
            log_path=root / "microstackd.log",
            extra=list(extra),
        )
        self.root = root

    @property
    def log(self) -> Path:
        return self.log_path

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, spawn: launcher.Spawn | None = None, timeout: float = 60.0) -> Daemon:  # type: ignore[override]
        """Start the daemon on any free ports (kept for a restart); wait for ``ready``."""
        try:
            super().start(timeout=timeout)
        except launcher.NotReady as exc:
            raise RuntimeError(str(exc)) from None
        return self

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

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """SIGTERM (the daemon stops its services), then SIGKILL if it hangs."""
        return super().stop(sig, timeout)


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
        d = Daemon(name, host, root or self.root / name, extra)
        d.port = port
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
