"""The node's uplink into Open vSwitch (microstackd/node/uplink.py) and the
MAC its address moves to: the announcement frame, and for real (root
only), two nodes in network namespaces the test makes, each with its own
ovsdb-server and ovs-vswitchd on the userspace datapath, as a compute
and its control are.

What the real test pins (docs/openstack-bringup.md, pitfall 11): a peer's
Open vSwitch learns a tunnel neighbour's MAC from ARP and keeps it for 15
minutes; a node that moves its address from its interface to ``br-phy``
(after the peer learned the interface's MAC, as happens while it joins)
must announce the move, or the peer's vxlan to it goes to the interface's
MAC, which Open vSwitch does not end tunnels for. And the interface,
which still receives every frame, must not answer ARP for the address
with its own MAC."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from microstackd.node import uplink


def test_the_announcement_is_a_broadcast_arp_request_for_the_address_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(uplink, "mac_of", lambda interface: bytes.fromhex("02aabbccddee"))
    frame = uplink.gratuitous_arp("br-phy", "10.251.0.12")
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == bytes.fromhex("02aabbccddee")
    assert frame[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    sha, spa, tha, tpa = frame[22:28], frame[28:32], frame[32:38], frame[38:42]
    assert sha == bytes.fromhex("02aabbccddee") and tha == bytes(6)
    assert spa == tpa == bytes([10, 251, 0, 12])
    assert len(frame) == 42


def test_where_proc_sys_or_raw_sockets_are_refused_it_warns_and_goes_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A read-only /proc/sys (some containers) or no CAP_NET_RAW: the
    uplink still moves the address, as it did before, and says what it
    could not do."""

    def refused(*args: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(uplink, "set_arp_ignore", refused)
    monkeypatch.setattr(uplink, "announce", refused)
    args = argparse.Namespace(db="unix:x", address="10.0.0.5", bridge="br-phy",
                              state=str(tmp_path / "s.json"), external=[])  # fmt: skip
    up = uplink.Uplink(args)
    assert "warning: it may answer ARP for 10.0.0.5" in up._quieten("eth0")
    assert up._announce("br-phy").startswith("warning: not announced at br-phy's MAC")


_NEEDS = ("ip", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-appctl", "ovsdb-tool", "ping")
_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")


def _run(*argv: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}"
    return done.stdout


class Node:
    """A namespace with ``eth0`` holding ``address``, and its own Open vSwitch."""

    def __init__(self, ns: str, address: str, work: Path) -> None:
        self.ns, self.address, self.work = ns, address, work
        self.env = {**os.environ, "OVS_RUNDIR": str(work), "OVS_DBDIR": str(work),
                    "OVS_LOGDIR": str(work)}  # fmt: skip
        self.db = f"unix:{work}/db.sock"
        self.uplink: subprocess.Popen[bytes] | None = None

    def in_ns(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def start_ovs(self) -> None:
        w = self.work
        _run("ovsdb-tool", "create", str(w / "conf.db"), str(_SCHEMA))
        _run(*self.in_ns("ovsdb-server", str(w / "conf.db"), f"--remote=punix:{w}/db.sock",
                         f"--pidfile={w}/db.pid", f"--unixctl={w}/db.ctl", "--detach"),
             env=self.env)  # fmt: skip
        _run(*self.in_ns("ovs-vswitchd", self.db, f"--pidfile={w}/vs.pid",
                         f"--unixctl={w}/vs.ctl", f"--log-file={w}/vs.log", "--detach"),
             env=self.env)  # fmt: skip
        self.vsctl("add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev")

    def vsctl(self, *args: str) -> str:
        return _run("ovs-vsctl", f"--db={self.db}", "--timeout=20", *args)

    def appctl(self, *args: str) -> str:
        return _run("ovs-appctl", "-t", str(self.work / "vs.ctl"), *args)

    def mac(self, interface: str) -> str:
        return _run("ip", "-n", self.ns, "-br", "link", "show", interface).split()[2]

    def start_uplink(self) -> None:
        log = self.work / "uplink.log"
        with log.open("w") as out:
            self.uplink = subprocess.Popen(
                self.in_ns(sys.executable, "-m", "microstackd.node.uplink", "--db", self.db,
                           "--address", self.address, "--state", str(self.work / "uplink.json")),
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while uplink.READY not in log.read_text():
            if self.uplink.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the uplink of {self.ns} is not ready: {log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.uplink is not None and self.uplink.poll() is None:
            self.uplink.send_signal(signal.SIGTERM)
            try:
                self.uplink.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.uplink.kill()
                self.uplink.wait()
        for pid in ("vs.pid", "db.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((self.work / pid).read_text()), signal.SIGTERM)


@contextlib.contextmanager
def two_nodes(tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """Nodes a (10.77.0.1) and b (10.77.0.2), their eth0s a veth pair."""
    tag = uuid.uuid4().hex[:6]
    a = Node(f"uplnk-a-{tag}", "10.77.0.1", tmp_path / "a")
    b = Node(f"uplnk-b-{tag}", "10.77.0.2", tmp_path / "b")
    made: list[Node] = []
    try:
        for node in (a, b):
            node.work.mkdir()
            _run("ip", "netns", "add", node.ns)
            made.append(node)
        _run("ip", "link", "add", "eth0", "netns", a.ns, "type", "veth", "peer", "name", "eth0",
             "netns", b.ns)  # fmt: skip
        for node in (a, b):
            _run("ip", "-n", node.ns, "addr", "add", f"{node.address}/24", "dev", "eth0")
            _run("ip", "-n", node.ns, "link", "set", "eth0", "up")
            node.start_ovs()
        yield a, b
    finally:
        for node in made:
            node.stop()
        for node in made:
            subprocess.run(["ip", "netns", "delete", node.ns], check=False)


def _neighbour(node: Node, address: str) -> str | None:
    for line in node.appctl("tnl/neigh/show").splitlines():
        fields = line.split()
        if fields and fields[0] == address:
            return fields[1]
    return None


@pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(t) for t in _NEEDS) or not _SCHEMA.exists(),
    reason="needs root, ip and Open vSwitch (two network namespaces)",
)
def test_a_peer_learns_the_bridges_mac_when_the_address_moves(tmp_path: Path) -> None:
    with two_nodes(tmp_path) as (a, b):
        b.start_uplink()  # b is the control: up before a joins
        # b's vxlan to a, and a frame that crosses it, so b resolves a's MAC
        # while a's address is still on its eth0 (a joining, before its services).
        b.vsctl("add-br", "br-tun", "--", "set", "bridge", "br-tun", "datapath_type=netdev",
                "--", "add-port", "br-tun", "vx", "--", "set", "interface", "vx", "type=vxlan",
                f"options:remote_ip={a.address}", f"options:local_ip={b.address}",
                "--", "add-port", "br-tun", "p0", "--", "set", "interface", "p0",
                "type=internal")  # fmt: skip
        deadline = time.monotonic() + 10
        while _neighbour(b, a.address) is None and time.monotonic() < deadline:
            subprocess.run(["ip", "-n", b.ns, "link", "set", "p0", "up"], check=False)
            subprocess.run(["ip", "-n", b.ns, "addr", "replace", "192.168.99.2/24", "dev", "p0"],
                           check=False)  # fmt: skip
            subprocess.run(b.in_ns("ping", "-c1", "-W1", "192.168.99.1"), capture_output=True)
        assert _neighbour(b, a.address) == a.mac("eth0")

        a.start_uplink()
        assert a.mac("br-phy") != a.mac("eth0")
        deadline = time.monotonic() + 5
        while _neighbour(b, a.address) != a.mac("br-phy") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _neighbour(b, a.address) == a.mac("br-phy"), "b still tunnels to a's eth0 MAC"

        # a's eth0 answers no ARP for the address it no longer holds; b's
        # kernel, asking afresh, learns br-phy's MAC every time.
        arp_ignore = Path("/proc/sys/net/ipv4/conf/eth0/arp_ignore")
        held = _run(*a.in_ns("cat", str(arp_ignore))).strip()
        assert held == "1"
        for _ in range(5):
            _run("ip", "-n", b.ns, "neigh", "flush", "all")
            _run(*b.in_ns("ping", "-c1", "-W2", a.address))
            shown = _run("ip", "-n", b.ns, "neigh", "show", a.address, "dev", "br-phy")
            assert a.mac("br-phy") in shown, shown

        a.stop()  # SIGTERM: the address back on eth0, which answers ARP again
        assert _run(*a.in_ns("cat", str(arp_ignore))).strip() == "0"
        assert f"{a.address}/24" in _run("ip", "-n", a.ns, "-br", "addr", "show", "eth0")
