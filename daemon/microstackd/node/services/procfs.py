"""Processes and process groups, read from /proc and signalled: what the
process manager needs to stop a service and everything it started, and to
recognise a service a killed daemon left running."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path


async def probe(check: str, timeout: float = 1.0) -> bool:
    """Whether ``check`` (see ``ServiceSpec.ready_check``) answers now."""
    scheme, _, rest = check.partition("://")
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            if scheme == "unix":
                _reader, writer = await asyncio.open_unix_connection(rest)
                return True
            hostport, _, path = rest.partition("/")
            host, _, port = hostport.rpartition(":")
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            if scheme == "tcp":
                return True
            writer.write(f"GET /{path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n".encode())
            await writer.drain()
            parts = (await reader.readline()).split()
            return len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) < 500
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()


def size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def killpg(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    if not killpg(proc.pid, sig) and proc.returncode is None:
        # It left its process group; signal it at least.
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def group_members(pgid: int) -> list[int]:
    """Processes of a process group that are still alive (zombies are not)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [pgid]  # cannot tell: assume it lives
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...; comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] not in (b"Z", b"X") and fields[2] == str(pgid).encode():
            members.append(int(entry))
    return members


def start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat), or "0"."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return "0"
    fields = stat[stat.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else "0"


def environ(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


async def end_group(pgid: int, deadline: float) -> None:
    """Wait until a process group is gone; SIGTERM it, then SIGKILL at the
    deadline. Returns once no member is alive (or, after SIGKILL, 1 s more)."""
    loop = asyncio.get_running_loop()
    if not group_members(pgid):
        return
    killpg(pgid, signal.SIGTERM)
    while group_members(pgid):
        if loop.time() >= deadline:
            killpg(pgid, signal.SIGKILL)
            give_up = loop.time() + 1.0
            while group_members(pgid) and loop.time() < give_up:
                await asyncio.sleep(0.02)
            return
        await asyncio.sleep(0.02)
