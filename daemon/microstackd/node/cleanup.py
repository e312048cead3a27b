"""Stop hooks of role services (``ServiceSpec.pre_stop``/``post_stop``):
what a service started outside its process group goes with it.

    python -m microstackd.node.cleanup destroy-domains --uri URI [--prefix instance-]
        destroy the running libvirt domains Nova made (before libvirtd stops:
        QEMU leaves libvirtd's process group and outlives it)
    python -m microstackd.node.cleanup kill-pidfiles --name NAME GLOB...
        end the processes named in the pid files matching GLOB whose command
        is NAME (dnsmasq of the DHCP agent, QEMU of a libvirtd that died)

Each prints what it did, one line per process or domain.
"""

from __future__ import annotations

import argparse
import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: How long a process has after SIGTERM before SIGKILL.
GRACE = 5.0


def destroy_domains(uri: str, prefix: str) -> list[str]:
    listed = subprocess.run(
        ["virsh", "-c", uri, "list", "--name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if listed.returncode != 0:
        return [f"virsh list failed (libvirtd not answering?): {listed.stderr.strip()}"]
    done = []
    for name in listed.stdout.split():
        if not name.startswith(prefix):
            continue
        result = subprocess.run(
            ["virsh", "-c", uri, "destroy", name],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        outcome = "destroyed" if result.returncode == 0 else result.stderr.strip()
        done.append(f"domain {name}: {outcome}")
    return done


def _command(pid: int) -> str:
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return ""
    return Path(argv0.decode(errors="replace")).name


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_pidfiles(patterns: list[str], name: str) -> list[str]:
    """SIGTERM, then after GRACE SIGKILL, every live process whose pid is in
    a matching file and whose command is ``name`` (a reused pid is spared)."""
    pids: dict[int, str] = {}
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            try:
                pid = int(Path(path).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if pid > 1 and _alive(pid) and name in _command(pid):
                pids[pid] = path
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + GRACE
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    done = []
    for pid, path in pids.items():
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            done.append(f"{name} {pid} ({path}) killed")
        else:
            done.append(f"{name} {pid} ({path}) stopped")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m microstackd.node.cleanup")
    sub = parser.add_subparsers(dest="command", required=True)
    domains = sub.add_parser("destroy-domains")
    domains.add_argument("--uri", required=True)
    domains.add_argument("--prefix", default="instance-")
    pidfiles = sub.add_parser("kill-pidfiles")
    pidfiles.add_argument("--name", required=True)
    pidfiles.add_argument("patterns", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "destroy-domains":
        done = destroy_domains(args.uri, args.prefix)
    else:
        done = kill_pidfiles(args.patterns, args.name)
    print("\n".join(done) or "nothing to do", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
