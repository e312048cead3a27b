"""Start one microstackd and know when it is ready: the one daemon launcher.

The daemon's output goes to its log file through a reader thread, which also
watches for the ``ready`` line (logged once the socket and both ports
listen) and reads the ports the daemon bound from it. A daemon started on
port 0 gets free ports from the kernel; once known they are kept, so a
restarted daemon comes back on the same ports (its peers know them).

How the process is spawned is the caller's (``spawn``): directly, or inside
a network namespace (``netns.Host.popen``). Its process group is its own.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

_BIN = Path(sys.executable).parent
READY = re.compile(rb"msg=ready .*?listen=(\S+) cluster_port=(\d+)")

Spawn = Callable[..., "subprocess.Popen[bytes]"]


def tool(name: str) -> str:
    """The venv's copy of a console script (microstackd, microstackctl), else PATH's."""
    local = _BIN / name
    if local.exists():
        return str(local)
    return shutil.which(name) or name


def _popen(argv: Sequence[str], **kw: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(argv), start_new_session=True, **kw)


class NotReady(AssertionError):
    """The daemon exited, or did not log ``ready`` in time."""

    def __init__(self, name: str, reason: str, log: str) -> None:
        super().__init__(f"microstackd {name} {reason}\n{log}")
        self.reason = reason
        self.log = log


@dataclass
class Daemon:
    """One microstackd: where it keeps its state, where it listens, its process."""

    name: str
    host: str
    state_dir: Path
    socket: Path
    config_root: Path
    log_path: Path
    #: The bootstrap port (0: any, read back at start) and the mTLS port (0:
    #: the daemon's default: the next one up, or any when the first is any).
    port: int = 0
    cluster_port: int = 0
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    #: Seconds from spawning the process to its ``ready`` line.
    ready_seconds: float = 0.0
    _reader: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def argv(self) -> list[str]:
        argv = [
            tool("microstackd"),
            "--state-dir", str(self.state_dir),
            "--socket", str(self.socket),
            "--listen", self.endpoint,
            "--node-name", self.name,
            "--service-manager", "process",
            "--config-root", str(self.config_root),
        ]  # fmt: skip
        if self.cluster_port:
            argv += ["--cluster-port", str(self.cluster_port)]
        return [*argv, *self.extra]

    def start(self, spawn: Spawn = _popen, timeout: float = 30.0) -> subprocess.Popen[bytes]:
        """Start the daemon; return once it logged ``ready``, its ports read back."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} already runs (pid {self.proc.pid})")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv()
        ready = threading.Event()
        ports: list[tuple[int, int]] = []
        started = time.perf_counter()
        with open(self.log_path, "ab") as log:
            log.write(f"### {' '.join(argv)}\n".encode())
        self.proc = proc = spawn(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert proc.stdout is not None

        def read(stream: IO[bytes]) -> None:
            with stream, open(self.log_path, "ab") as log:
                for line in stream:
                    log.write(line)
                    log.flush()
                    if not ready.is_set() and (found := READY.search(line)):
                        listen, cluster = found.groups()
                        ports.append((int(listen.rpartition(b":")[2]), int(cluster)))
                        self.ready_seconds = time.perf_counter() - started
                        ready.set()

        self._reader = threading.Thread(target=read, args=(proc.stdout,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.02):
            if proc.poll() is not None or time.monotonic() > deadline:
                code = proc.poll()
                self.stop(signal.SIGKILL)
                why = (
                    f"exited {code} before it was ready"
                    if code is not None
                    else f"not ready within {timeout:g} s"
                )
                raise NotReady(self.name, why, self.log_tail(60))
        self.port, self.cluster_port = ports[0]  # kept: a restart comes back on them
        return proc

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal the daemon's process group; SIGKILL after ``timeout``; its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)
        return proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return f"--- no microstackd log for {self.name}"
        text = self.log_path.read_text(errors="replace").splitlines()
        shown = "\n".join(text[-lines:])
        return f"--- {self.log_path} (last {min(lines, len(text))} lines)\n{shown}"
