"""The node's uplink into Open vSwitch, as a role service (``ovs-uplink``).

Open vSwitch's userspace datapath (no kernel module here) sends vxlan only
through a route whose device is an OVS bridge: with the node's address on
its own interface the tunnels exist and carry nothing. So, while this runs:

* the interface holding the node's address (``--address``) is a port of the
  bridge ``br-phy``, its TX checksum offload off (a veth hands the userspace
  datapath frames with unfilled checksums, which the far kernel drops);
* the address (and the routes through that interface) sit on ``br-phy``;
* the interface answers no ARP for it (``arp_ignore=1``): Linux answers an
  ARP request for any of its addresses on whichever interface it arrives,
  so the interface, which still receives every frame, would answer with
  its own MAC beside ``br-phy``. A peer that keeps that MAC reaches this
  node's kernel still, but Open vSwitch ends a tunnel only for frames to
  the bridge's MAC: its vxlan from that peer is dropped (a guest without
  its DHCP lease; docs/openstack-bringup.md, pitfall 11);
* once moved, a gratuitous ARP from the bridge tells the peers (their
  kernels, and their Open vSwitch, which learns tunnel neighbours from ARP
  for 15 minutes) the address's new MAC: they learned the interface's
  while the node joined;
* on the control, the external bridge holds the external network's gateway
  address (``--external br-ex=10.20.20.1/24``): the node reaches floating IPs.

ovs-vswitchd recreates its bridges' devices without addresses when it
restarts: this puts them back (it checks every ``INTERVAL`` s). On SIGTERM
it puts the address and routes back on the interface and takes the
interface out of the bridge, so a node whose services stop keeps its
address. What it moved is recorded in ``--state`` (JSON), so a later run
(after a killed daemon) knows where the address belongs.

    python -m microstackd.node.uplink --db unix:SOCK --address 10.0.0.11 \\
        --state FILE [--bridge br-phy] [--external br-ex=10.20.20.1/24]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

INTERVAL = 1.0
READY = "uplink ready"


class UplinkError(Exception):
    pass


def run(*argv: str, check: bool = True) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise UplinkError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result.stdout


def say(text: str) -> None:
    print(f"ovs-uplink: {text}", flush=True)


@dataclass
class Moved:
    """What this service moved, to put it back."""

    interface: str
    address: str
    prefixlen: int
    #: Routes through the interface besides the connected one: {dst, gateway, metric}.
    routes: list[dict[str, Any]] = field(default_factory=list)
    #: Its TX checksum offload was on before.
    tx_was_on: bool = False
    #: Its ``arp_ignore`` before (None: not recorded, from an older run).
    arp_ignore_was: int | None = None


def addresses() -> dict[str, list[tuple[str, int]]]:
    """IPv4 addresses by interface (``ip -j addr``)."""
    found: dict[str, list[tuple[str, int]]] = {}
    for link in json.loads(run("ip", "-j", "-4", "addr", "show") or "[]"):
        for info in link.get("addr_info", []):
            found.setdefault(link["ifname"], []).append((info["local"], int(info["prefixlen"])))
    return found


def holder(address: str) -> tuple[str, int] | None:
    """The interface holding ``address``, and its prefix length."""
    for name, addrs in addresses().items():
        for local, prefixlen in addrs:
            if local == address:
                return name, prefixlen
    return None


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def routes_via(interface: str) -> list[dict[str, Any]]:
    """The interface's routes that are not its connected subnet's."""
    routes = json.loads(run("ip", "-j", "-4", "route", "show", "dev", interface) or "[]")
    return [
        {k: r[k] for k in ("dst", "gateway", "metric") if k in r}
        for r in routes
        if r.get("gateway")
    ]


def put_routes(routes: Sequence[dict[str, Any]], interface: str) -> None:
    for route in routes:
        argv = ["ip", "route", "replace", route["dst"], "via", route["gateway"], "dev", interface]
        if "metric" in route:
            argv += ["metric", str(route["metric"])]
        run(*argv, check=False)


def move_address(address: str, prefixlen: int, source: str, target: str) -> None:
    cidr = f"{address}/{prefixlen}"
    run("ip", "link", "set", target, "up")
    run("ip", "addr", "del", cidr, "dev", source, check=False)
    run("ip", "addr", "replace", cidr, "dev", target)


def _arp_ignore_path(interface: str) -> Path:
    return Path("/proc/sys/net/ipv4/conf") / interface / "arp_ignore"


def arp_ignore(interface: str) -> int:
    return int(_arp_ignore_path(interface).read_text())


def set_arp_ignore(interface: str, value: int) -> None:
    _arp_ignore_path(interface).write_text(f"{value}\n")


def mac_of(interface: str) -> bytes:
    text = Path("/sys/class/net", interface, "address").read_text().strip()
    return bytes.fromhex(text.replace(":", ""))


def gratuitous_arp(interface: str, address: str) -> bytes:
    """The frame that announces ``address`` at ``interface``'s MAC: a
    broadcast ARP request whose sender and target are both the address (RFC
    5227's announcement; Linux updates its entries from it, Open vSwitch's
    tunnel neighbours too)."""
    mac, ip = mac_of(interface), ipaddress.IPv4Address(address).packed
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + bytes(6) + ip
    return b"\xff" * 6 + mac + struct.pack("!H", 0x0806) + arp


def announce(interface: str, address: str, times: int = 3, gap: float = 0.2) -> None:
    """Send the gratuitous ARP a few times (the first may go before the far
    ends' bridges forward)."""
    frame = gratuitous_arp(interface, address)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
        raw.bind((interface, 0))
        for k in range(times):
            if k:
                time.sleep(gap)
            raw.send(frame)


def tx_checksum_on(interface: str) -> bool:
    text = run("ethtool", "-k", interface, check=False)
    return any(line.strip() == "tx-checksumming: on" for line in text.splitlines())


class Uplink:
    def __init__(self, args: argparse.Namespace) -> None:
        self.db: str = args.db
        self.address: str = args.address
        self.bridge: str = args.bridge
        self.state = Path(args.state)
        self.external = [_external(item) for item in args.external]
        self.moved = self._load()

    def _load(self) -> Moved | None:
        try:
            return Moved(**json.loads(self.state.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _save(self, moved: Moved) -> None:
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(moved)) + "\n")
        tmp.replace(self.state)

    def vsctl(self, *args: str, check: bool = True) -> str:
        return run("ovs-vsctl", f"--db={self.db}", "--timeout=10", *args, check=check)

    def ensure(self) -> list[str]:
        """Make it so (what can be: the bridges may not exist yet); what was done."""
        done: list[str] = []
        found = holder(self.address)
        if self.moved is None:
            if found is None:
                raise UplinkError(f"no interface holds {self.address}")
            name, prefixlen = found
            if name == self.bridge:
                raise UplinkError(f"{self.address} is on {self.bridge} already, from elsewhere")
            if name == "lo" or ipaddress.ip_address(self.address).is_loopback:
                raise UplinkError(
                    f"{self.address} is a loopback address: vxlan between nodes needs each "
                    "node's address on an interface of its own (on one machine: a network "
                    "namespace per node, see the README)"
                )
            self.moved = Moved(
                name,
                self.address,
                prefixlen,
                routes_via(name),
                tx_checksum_on(name),
                arp_ignore(name),
            )
            self._save(self.moved)
        moved = self.moved
        if not link_exists(self.bridge):
            return done  # ovs-vswitchd is (re)starting: next round
        if found is None or found[0] != self.bridge:
            self.vsctl("--may-exist", "add-port", self.bridge, moved.interface)
            run("ethtool", "-K", moved.interface, "tx", "off", check=False)
            quiet = self._quieten(moved.interface)
            move_address(self.address, moved.prefixlen, moved.interface, self.bridge)
            put_routes(moved.routes, self.bridge)
            done.append(
                f"{self.address}/{moved.prefixlen} on {self.bridge} ({moved.interface} in "
                f"{self.bridge}, its TX checksum offload off{quiet}; "
                f"{self._announce(self.bridge)})"
            )
        elif link_exists(moved.interface) and arp_ignore(moved.interface) != 1:
            # moved by a run that did not set it
            quiet = self._quieten(moved.interface)
            done.append(f"{moved.interface}{quiet}; {self._announce(self.bridge)}")
        have = addresses()
        for bridge, cidr in self.external:
            if not link_exists(bridge):
                continue
            if _split(cidr) not in have.get(bridge, []):
                run("ip", "link", "set", bridge, "up")
                run("ip", "addr", "replace", cidr, "dev", bridge)
                done.append(f"{cidr} on {bridge}")
        return done

    def _quieten(self, interface: str) -> str:
        """``interface`` answers no ARP for addresses it does not hold: what
        to say of it (where /proc/sys is read-only, a warning instead)."""
        try:
            set_arp_ignore(interface, 1)
        except OSError as exc:
            return (
                f"; warning: it may answer ARP for {self.address} with its own MAC "
                f"(arp_ignore not set: {exc})"
            )
        return f", it answers no ARP for {self.address}"

    def _announce(self, interface: str) -> str:
        try:
            announce(interface, self.address)
        except OSError as exc:
            return f"warning: not announced at {interface}'s MAC ({exc})"
        return f"announced at {interface}'s MAC"

    def in_place(self) -> bool:
        have = addresses()
        if (self.address, self.moved.prefixlen if self.moved else -1) not in have.get(
            self.bridge, []
        ):
            return False
        return all(_split(cidr) in have.get(bridge, []) for bridge, cidr in self.external)

    def restore(self) -> None:
        """Put the address back on the interface; take it out of the bridge."""
        moved = self.moved
        if moved is None:
            return
        found = holder(self.address)
        if found is None or found[0] != moved.interface:
            move_address(self.address, moved.prefixlen, self.bridge, moved.interface)
            put_routes(moved.routes, moved.interface)
        self.vsctl("--if-exists", "del-port", self.bridge, moved.interface, check=False)
        if moved.tx_was_on:
            run("ethtool", "-K", moved.interface, "tx", "on", check=False)
        try:
            set_arp_ignore(moved.interface, moved.arp_ignore_was or 0)
        except OSError as exc:
            say(f"could not set {moved.interface}'s arp_ignore back: {exc}")
        say(self._announce(moved.interface))  # the peers learned the bridge's MAC
        say(f"{self.address}/{moved.prefixlen} back on {moved.interface}")
        self.state.unlink(missing_ok=True)


def _external(item: str) -> tuple[str, str]:
    bridge, sep, cidr = item.partition("=")
    if not sep or "/" not in cidr:
        raise SystemExit(f"--external {item!r}: expected BRIDGE=ADDRESS/PREFIX")
    return bridge, cidr


def _split(cidr: str) -> tuple[str, int]:
    address, _, prefixlen = cidr.partition("/")
    return address, int(prefixlen)


class Stop(Exception):
    pass


def _stop(signum: int, frame: FrameType | None) -> None:
    raise Stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m microstackd.node.uplink")
    parser.add_argument("--db", required=True, help="the node's ovsdb, e.g. unix:/run/.../db.sock")
    parser.add_argument("--address", required=True, help="the node's address (vxlan local_ip)")
    parser.add_argument("--state", required=True, help="where what was moved is recorded")
    parser.add_argument("--bridge", default="br-phy")
    parser.add_argument("--external", action="append", default=[], metavar="BRIDGE=CIDR")
    uplink = Uplink(parser.parse_args(argv))
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    ready = False
    try:
        while True:
            try:
                for done in uplink.ensure():
                    say(done)
            except UplinkError as exc:
                say(f"error: {exc}")
                if not ready:
                    return 1
            if not ready and uplink.in_place():
                externals = "".join(f", {cidr} on {bridge}" for bridge, cidr in uplink.external)
                say(f"{READY}: {uplink.address} on {uplink.bridge}{externals}")
                ready = True
            time.sleep(INTERVAL)
    except Stop:
        try:
            uplink.restore()
        except UplinkError as exc:
            say(f"error putting the address back: {exc}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
