"""Stop hooks of role services (``ServiceSpec.pre_stop``/``post_stop``):
what a service started outside its process group goes with it.

    python -m microstackd.node.cleanup destroy-domains --uri URI [--prefix instance-]
        destroy the running libvirt domains Nova made (before libvirtd stops:
        QEMU leaves libvirtd's process group and outlives it)
    python -m microstackd.node.cleanup kill-pidfiles --name NAME GLOB...
        end the processes named in the pid files matching GLOB whose command
        is NAME (dnsmasq of the DHCP agent, QEMU of a libvirtd that died)
    python -m microstackd.node.cleanup release-netns BASE
        unmount what a Neutron agent kept for its restarts (roles/network.py,
        IN_OWN_NETNS_DIR): the mount namespace held on BASE/mnt, with the
        network namespaces mounted in it (they go once nothing runs in
        them), and the private bind mount of BASE

Each prints what it did, one line per process or domain.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
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


def _unescape(field: str) -> str:
    """A mount point as /proc/self/mountinfo writes it (octal escapes)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> list[str]:
    """This process's mount namespace's mount points, in mount order."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [_unescape(line.split()[4]) for line in lines if len(line.split()) > 4]


def release_netns(base: Path) -> list[str]:
    """Unmount ``base/mnt`` (the agent's mount namespace: its network
    namespaces go with it) and ``base``; remove the names left in
    ``base/netns``. What is not mounted is left alone: idempotent."""
    base = base.absolute()
    handle = base / "mnt"
    names = sorted(p.name for p in (base / "netns").glob("*"))
    done = []
    for path in (handle, base):
        if str(path) not in mount_points():
            continue
        result = subprocess.run(
            ["umount", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            done.append(f"umount {path} failed: {result.stderr.strip()}")
            return done  # what stays mounted keeps its names meaningful
        if path == handle:
            done.append(f"mount namespace {handle} released with {', '.join(names) or 'no'} netns")
        else:
            done.append(f"{path} unmounted")
    for name in names:
        with contextlib.suppress(OSError):
            (base / "netns" / name).unlink()
    with contextlib.suppress(OSError):
        (base / "error").unlink()  # the last failed try to make one, if any
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
    netns = sub.add_parser("release-netns")
    netns.add_argument("base", type=Path)
    args = parser.parse_args(argv)
    if args.command == "destroy-domains":
        done = destroy_domains(args.uri, args.prefix)
    elif args.command == "kill-pidfiles":
        done = kill_pidfiles(args.patterns, args.name)
    else:
        done = release_netns(args.base)
    print("\n".join(done) or "nothing to do", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
