"""Real microstackd processes on loopback addresses, for the integration suite."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port_pair(host: str) -> int:
    """A port p such that p and p+1 are free on host (best effort)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind((host, 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind((host, port + 1))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no free port pair")


@dataclass
class Node:
    name: str
    address: str
    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)

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
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def start(self) -> Node:
        if not self.port:
            self.port = free_port_pair(self.address)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "microstackd"),
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
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()}")
            if self.socket.exists() and b"msg=ready" in self.log.read_bytes():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not become ready: {self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def ctl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / "microstackctl"), "--socket", str(self.socket), *args],
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

    def status(self) -> dict[str, object]:
        return json.loads(self.ctl("status", "--format", "json").stdout)  # type: ignore[no-any-return]
