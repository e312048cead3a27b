"""Does Open vSwitch's userspace datapath lose a new tap's UP flag?

    sudo .venv/bin/python -m bench.tap_flags_race [--rounds 200] [--repair]

What a compute does when Nova starts a guest, without Nova: os-vif has put
the port ``tapN`` on br-int (``datapath_type=netdev``) before the device
exists; libvirt then makes the tap (``TUNSETIFF``, the file descriptor kept
open as QEMU's) and brings it up (``SIOCGIFFLAGS`` then ``SIOCSIFFLAGS``,
as libvirt's ``virNetDevSetOnline``). ovs-vswitchd opens the device as it
appears and turns PROMISC on from the flags it cached when it opened it; when
libvirt's UP lands between the two, OVS's write takes it back, and the
guest's frames are dropped by the kernel (a guest without a DHCP lease:
docs/performance.md).

Each round makes one tap that way, waits ``--settle`` seconds and reads its
flags; the rounds whose tap ended down are counted. With ``--repair`` each
round then runs ``microstackd.node.taps.repair`` (what the compute's libvirt
hook does once a guest has started) and counts what is still down after it.

Everything runs in a network namespace of its own (``tapraceNNNN``) with its
own ovsdb-server and ovs-vswitchd in a temporary directory, all removed at
the end, on failure too.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFF_PROMISC = 0x100


def make_tap(name: str) -> int:
    """A tap as libvirt makes one for an ``ethernet`` interface: the open
    file descriptor keeps it (QEMU's, here ours)."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(
        fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    )
    return fd


def flags(name: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        got = fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", name.encode(), 0))
    return int(struct.unpack("16sH", got[:18])[1])


def set_up(name: str) -> None:
    """libvirt's virNetDevSetOnline: read the flags, write them back with UP."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        current = flags(name)
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", name.encode(), current | IFF_UP))


@contextlib.contextmanager
def open_vswitch(ns: str, work: Path) -> Iterator[dict[str, str]]:
    """ovsdb-server and ovs-vswitchd in ``ns``, br-int on the userspace datapath."""
    env = {**os.environ, "OVS_RUNDIR": str(work), "OVS_DBDIR": str(work), "OVS_LOGDIR": str(work)}
    db, sock = work / "conf.db", work / "db.sock"
    subprocess.run(
        ["ovsdb-tool", "create", str(db), "/usr/share/openvswitch/vswitch.ovsschema"], check=True
    )
    inns = ["ip", "netns", "exec", ns]
    procs = [
        subprocess.Popen(
            [*inns, "ovsdb-server", str(db), f"--remote=punix:{sock}", f"--pidfile={work}/db.pid"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        procs.append(
            subprocess.Popen(
                [
                    *inns,
                    "ovs-vswitchd",
                    f"unix:{sock}",
                    f"--pidfile={work}/vs.pid",
                    f"--log-file={work}/vs.log",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        vsctl = ["ovs-vsctl", f"--db=unix:{sock}", "--timeout=20"]
        subprocess.run(
            [
                *vsctl,
                "--may-exist",
                "add-br",
                "br-int",
                "--",
                "set",
                "bridge",
                "br-int",
                "datapath_type=netdev",
            ],
            check=True,
            env=env,
        )
        yield {"vsctl": json.dumps(vsctl)}
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def inner(
    rounds: int, settle: float, gap: float, repair: bool, vsctl: list[str]
) -> dict[str, object]:
    """The rounds, in the namespace (this process was started in it)."""
    down = repaired_down = promisc = 0
    fds: list[int] = []
    for i in range(rounds):
        name = f"tap{i:04d}race"[:15]
        subprocess.run(
            [*vsctl, "--", "--may-exist", "add-port", "br-int", name],
            check=True,
            capture_output=True,
        )
        fd = make_tap(name)
        fds.append(fd)
        time.sleep(random.uniform(0, gap))
        set_up(name)
        time.sleep(settle)
        seen = flags(name)
        promisc += bool(seen & IFF_PROMISC)
        if not seen & IFF_UP:
            down += 1
        if repair:
            from microstackd.node import taps

            taps.repair([name])
            if not flags(name) & IFF_UP:
                repaired_down += 1
        subprocess.run(
            [*vsctl, "--if-exists", "del-port", "br-int", name], check=True, capture_output=True
        )
        os.close(fds.pop())
    return {
        "rounds": rounds,
        "promisc": promisc,
        "left_down": down,
        "down_after_repair": repaired_down if repair else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--settle", type=float, default=0.3, help="seconds between UP and the look")
    parser.add_argument(
        "--gap",
        type=float,
        default=0.02,
        help="longest wait between making the tap and UP (uniform)",
    )
    parser.add_argument("--repair", action="store_true")
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(
            json.dumps(
                inner(args.rounds, args.settle, args.gap, args.repair, json.loads(args.inner))
            )
        )
        return 0
    ns = f"taprace{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="taprace-"))
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        with open_vswitch(ns, work) as ovs:
            argv = [sys.executable, "-m", "bench.tap_flags_race", "--rounds", str(args.rounds)]
            argv += ["--settle", str(args.settle), "--gap", str(args.gap), "--inner", ovs["vsctl"]]
            if args.repair:
                argv.append("--repair")
            run = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)
            sys.stderr.write(run.stderr)
            print(run.stdout.strip())
            return run.returncode
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
