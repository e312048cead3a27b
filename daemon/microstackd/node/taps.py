"""Bringing a guest's tap up when Open vSwitch has taken its UP flag back.

A compute's guests reach br-int through a tap libvirt makes (Nova's
``ethernet`` interfaces: os-vif has added the port to br-int before the
device exists). ovs-vswitchd opens the device the moment it appears and, on
the userspace datapath, turns PROMISC on by writing the flags it cached when
it opened it. When libvirt's own write (UP) lands between the two, OVS's
write takes UP back: the tap stays administratively down, the kernel drops
every frame QEMU sends, and the guest never gets a DHCP lease (measured:
``bench/tap_flags_race.py``; docs/performance.md, "The warm guest without a
lease").

libvirt runs its ``qemu`` hook (``templates/compute/libvirt-qemu-hook``,
rendered as ``CONFIG_ROOT/libvirt/hooks/qemu``) with the domain's XML on
standard input once a guest has started, an incoming migration's included,
and for each guest it finds running when it starts again. ``hook`` then
brings up each of the guest's taps that is down, unless the domain asks for
its link down (``<link state='down'/>``), looks again a moment later for a
guest just started (OVS's write may still be on its way) and says what it
repaired, in the file it is
given and on standard error.

Only the standard library: libvirtd waits for the hook before the guest
goes on.
"""

from __future__ import annotations

import argparse
import fcntl
import socket
import struct
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
#: The hook's operations that leave a running guest with its taps made.
PHASES = ("started", "reconnect")
#: Seconds before the second look.
SECOND_LOOK = 0.5

Flags = Callable[[str], int | None]
SetUp = Callable[[str], None]


def guest_taps(domain_xml: str) -> list[str]:
    """The target devices of the domain's interfaces whose link the domain
    wants up (libvirt's default), in document order."""
    root = ET.fromstring(domain_xml)
    taps = []
    for iface in root.iterfind("./devices/interface"):
        target = iface.find("target")
        link = iface.find("link")
        if target is None or not target.get("dev"):
            continue
        if link is not None and link.get("state") == "down":
            continue
        taps.append(str(target.get("dev")))
    return taps


def _ifreq(name: str, flags: int = 0) -> bytes:
    return struct.pack("16sH", name.encode(), flags)


def flags(name: str) -> int | None:
    """The interface's flags; None when it does not exist (any more)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            got = fcntl.ioctl(s, SIOCGIFFLAGS, _ifreq(name))
        except OSError:
            return None
    return int(struct.unpack("16sH", got[:18])[1])


def set_up(name: str) -> None:
    """UP added to the interface's current flags, read just before."""
    current = flags(name)
    if current is None:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCSIFFLAGS, _ifreq(name, current | IFF_UP))


def repair(names: Iterable[str], read: Flags = flags, write: SetUp = set_up) -> list[str]:
    """Bring up each of ``names`` that exists and is down; the ones it did."""
    done = []
    for name in names:
        current = read(name)
        if current is not None and not current & IFF_UP:
            write(name)
            done.append(name)
    return done


def hook(
    argv: list[str],
    domain_xml: str,
    log: Path | None,
    read: Flags = flags,
    write: SetUp = set_up,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """libvirt's ``qemu`` hook (``argv``: domain, operation, sub-operation,
    extra): repair the taps of a guest that has started; the taps repaired,
    one entry per repair."""
    if len(argv) < 2 or argv[1] not in PHASES:
        return []
    names = guest_taps(domain_xml)
    if not names:
        return []
    repaired = repair(names, read, write)
    if argv[1] == "started":  # a reconnected guest's taps settled long ago
        sleep(SECOND_LOOK)
        repaired += repair(names, read, write)
    if repaired:
        line = (
            f"{datetime.now(UTC).isoformat(timespec='milliseconds')} {argv[0]} {argv[1]}: "
            f"brought up {', '.join(repaired)} (down while the domain wants its link up)"
        )
        print(line, file=sys.stderr)
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as f:
                f.write(line + "\n")
    return repaired


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="microstackd-tap-hook", description=__doc__)
    parser.add_argument("--log", type=Path, help="append a line per repair here")
    parser.add_argument(
        "hook_args", nargs="*", help="libvirt's: domain operation sub-operation extra"
    )
    args = parser.parse_args(argv)
    if len(args.hook_args) < 2 or args.hook_args[1] not in PHASES:
        return 0  # nothing to read: libvirt's other phases
    try:
        hook(args.hook_args, sys.stdin.read(), args.log)
    except (ET.ParseError, OSError) as exc:
        # Never fail the guest's start for this: say it, and let it run.
        print(f"microstackd tap hook: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
