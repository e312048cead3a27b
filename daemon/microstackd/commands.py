"""Run a command with a time limit: the one way this daemon runs a program
to completion (``systemctl``, a role's one-time setup commands, Nova's
``nova-manage``). Long-running services are the process manager's.

The command runs in a session of its own; when it overruns its time, or the
caller is cancelled, its whole process group is killed (SIGKILL) before the
error goes up: nothing it started is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

#: What ``stdout``/``stderr`` may be: a pipe (captured), DEVNULL, STDOUT, or an open file.
Stream = int | IO[bytes]
PIPE = asyncio.subprocess.PIPE
STDOUT = asyncio.subprocess.STDOUT


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    #: What it printed ("" where the stream was not captured).
    stdout: str
    stderr: str

    def failure(self) -> str | None:
        """None when it exited 0; otherwise what failed, and its own words."""
        if self.returncode == 0:
            return None
        why = self.stderr.strip() or self.stdout.strip() or "no output"
        return f"{shlex.join(self.argv)} failed with status {self.returncode}: {why}"


async def run(
    argv: Sequence[str],
    *,
    timeout: float,
    input: bytes | None = None,
    stdout: Stream = PIPE,
    stderr: Stream = PIPE,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Run ``argv`` to completion. Raises ``OSError`` when it cannot be started
    and ``TimeoutError`` when it did not finish within ``timeout`` seconds
    (its process group killed)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL if input is None else asyncio.subprocess.PIPE,
        stdout=stdout,
        stderr=stderr,
        env=None if env is None else dict(env),
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(input)
    except BaseException:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        raise
    assert proc.returncode is not None
    return Completed(
        tuple(argv),
        proc.returncode,
        (out or b"").decode(errors="replace"),
        (err or b"").decode(errors="replace"),
    )
