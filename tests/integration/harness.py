"""Real microstackd processes on loopback addresses, for the integration suite.

Each daemon binds port 0 (any free port) and the harness reads back the
ports it got (``sandbox.launcher``); a restarted daemon comes back on them.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandbox.launcher import Daemon, tool

MICROSTACKCTL = tool("microstackctl")


@dataclass
class Node:
    name: str
    address: str
    root: Path
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None
    daemon: Daemon | None = None

    def __post_init__(self) -> None:
        self.daemon = Daemon(
            name=self.name,
            host=self.address,
            state_dir=self.root / self.name,
            socket=self.socket,
            config_root=self.root / "etc",
            log_path=self.log,
        )

    @property
    def _daemon(self) -> Daemon:
        assert self.daemon is not None
        return self.daemon

    @property
    def socket(self) -> Path:
        return self.root / f"{self.name}.sock"

    @property
    def state_dir(self) -> Path:
        return self.root / self.name

    @property
    def log(self) -> Path:
        return self.root / f"{self.name}.log"

    @property
    def port(self) -> int:
        return self._daemon.port

    @property
    def cluster_port(self) -> int:
        return self._daemon.cluster_port

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self._daemon.proc

    def start(self) -> Node:
        daemon = self._daemon
        daemon.extra = list(self.extra)

        def spawn(argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
            return subprocess.Popen(argv, start_new_session=True, env=self.env, **kw)

        daemon.start(spawn, timeout=30)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self._daemon.stop(sig)

    def ctl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [MICROSTACKCTL, "--socket", str(self.socket), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"microstackctl {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}\n--- daemon log ---\n{self.log.read_text()}"
            )
        return result

    def init_control(
        self, password_file: Path, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``microstackctl init --role control --address MINE --password-file F``."""
        return self.ctl(
            "init",
            "--role",
            "control",
            "--address",
            self.address,
            "--password-file",
            str(password_file),
            check=check,
        )

    def join(
        self, control: Node, password_file: Path, *extra: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``microstackctl join CONTROL --password-file F --address MINE [EXTRA]``."""
        return self.ctl(
            "join",
            control.endpoint,
            "--password-file",
            str(password_file),
            "--address",
            self.address,
            *extra,
            check=check,
        )

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.ctl("status", "--format", "json").stdout)
        return data


def join_in_background(compute: Node, control: Node, password_file: Path) -> subprocess.Popen[str]:
    """`microstackctl join` with the password, JSON events on its stdout."""
    return subprocess.Popen(
        [
            MICROSTACKCTL,
            "--socket",
            str(compute.socket),
            "join",
            control.endpoint,
            "--password-file",
            str(password_file),
            "--address",
            compute.address,
            "--format",
            "json",
            "--timeout",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_text(path: Path, text: str, timeout: float = 20) -> None:
    """Wait until TEXT appears in the file at PATH (a daemon's log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}:\n{path.read_text()}")
