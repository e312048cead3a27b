"""Heartbeat datagrams with a real control and real members: a member
beats by UDP once its call brought a key (and holds no heartbeat stream);
the control takes a beat only of a live session (a replay, another key, a
removed node's beat are not answered and nobody is seen); a control with
datagrams off, and a member whose datagrams are dropped on the way, fall
back to the stream and stay active."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from microstackd import errors, versions
from microstackd.model import ClusterRecord, NodeCredentials, ServiceRecord, Software
from microstackd.peers.beats import BeatSender, DatagramSession
from microstackd.peers.cluster import ControlClient
from microstackd.trust import beat
from tests.integration.harness import Node

OURS = Software(versions.VERSION, versions.API_VERSION)
RUNNING = [ServiceRecord("nova-compute", "running")]
#: Members beat every second (a third of it).
FAST = ("--unreachable-after", "3")


def _node(control: Node, name: str) -> dict[str, object]:
    return next(n for n in control.status()["nodes"] if n["name"] == name)


def _last_seen(control: Node, name: str) -> str:
    return str(_node(control, name).get("last_seen", ""))


def _peers(pid: int, protocol: str = "-u") -> list[str]:
    """The remote ends of the UDP (``-u``) or TCP (``-t``) sockets process
    ``pid`` holds (``ss``; with ``-a`` its first column is the state)."""
    out = subprocess.run(
        ["ss", protocol, "-a", "-n", "-p", "-H"], capture_output=True, text=True, check=True
    ).stdout
    return [line.split()[4] for line in out.splitlines() if f"pid={pid}," in line]


def _wait(check: Callable[[], bool], seconds: float = 30) -> None:
    end = time.monotonic() + seconds
    while not check():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_a_member_beats_by_datagram_and_stays_active(
    make_node: Callable[..., Node], password_file: Path
) -> None:
    control = make_node("ctl", *FAST)
    control.init_control(password_file)
    compute = make_node("node-1")
    compute.join(control, password_file)
    assert compute.proc is not None
    where = f"{control.address}:{control.cluster_port}"
    pid = compute.proc.pid
    _wait(lambda: where in _peers(pid))
    # And no connection to the control is held meanwhile (its enrolment
    # stream ends with the enrolment; the call that brought the key, after it).
    _wait(lambda: where not in _peers(pid, "-t"))
    first = _last_seen(control, "node-1")
    _wait(lambda: _last_seen(control, "node-1") != first, 10)
    time.sleep(4)  # longer than unreachable-after: still seen
    assert _node(control, "node-1")["state"] == "active"
    assert where not in _peers(pid, "-t")
    assert "heartbeat datagrams" not in compute.log.read_text()  # no fallback, no warning


async def _session(cluster: ClusterRecord, creds: NodeCredentials) -> DatagramSession:
    client = ControlClient(cluster, creds)
    try:
        interval, session = await client.heartbeat_session(RUNNING, OURS)
    finally:
        await client.close()
    assert interval > 0 and session is not None
    return session


async def _raw(host: str, port: int, data: bytes, wait: float = 0.5) -> bytes | None:
    """Send one datagram from a socket of its own; the answer, if any."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect((host, port))
        await loop.sock_sendall(sock, data)
        try:
            return await asyncio.wait_for(loop.sock_recv(sock, 64), wait)
        except TimeoutError:
            return None


def test_a_beat_is_answered_once_and_only_for_its_session(
    control: Node, member: tuple[ClusterRecord, NodeCredentials]
) -> None:
    cluster, creds = member
    host = cluster.control_address

    async def main() -> dict[str, object]:
        session = await _session(cluster, creds)
        good = beat.seal_beat(session.key_id, session.key, 1)
        other_id, other_key = beat.new_key()
        return {
            "good": await _raw(host, session.port, good),
            "replayed": await _raw(host, session.port, good),
            "another key": await _raw(
                host, session.port, beat.seal_beat(session.key_id, other_key, 2)
            ),
            "no session": await _raw(host, session.port, beat.seal_beat(other_id, other_key, 2)),
            "garbage": await _raw(host, session.port, b"\xff" * 512),
            "next": await _raw(host, session.port, beat.seal_beat(session.key_id, session.key, 2)),
            "session": session,
        }

    got = asyncio.run(main())
    session = got.pop("session")
    assert isinstance(session, DatagramSession)
    assert beat.open_ack(got.pop("good"), session.key_id, session.key) == (1, 10)  # type: ignore[arg-type]
    assert beat.open_ack(got.pop("next"), session.key_id, session.key) == (2, 10)  # type: ignore[arg-type]
    assert got == {"replayed": None, "another key": None, "no session": None, "garbage": None}


def test_a_flood_of_forgeries_makes_nobody_seen_and_costs_no_answer(
    control: Node, member: tuple[ClusterRecord, NodeCredentials]
) -> None:
    cluster, creds = member

    async def main() -> tuple[int, int | None]:
        session = await _session(cluster, creds)
        loop = asyncio.get_running_loop()
        answers = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.connect((cluster.control_address, session.port))
            for counter in range(1, 20001):  # the right key id, never the right MAC
                await loop.sock_sendall(sock, beat.seal_beat(session.key_id, b"x" * 32, counter))
            await asyncio.sleep(0.5)
            while True:
                try:
                    sock.recv(64)
                    answers += 1
                except BlockingIOError:
                    break
        # The member's own beat is still taken after the flood.
        sender = await BeatSender.open(cluster.control_address, session)
        try:
            return answers, await sender.beat(5.0)
        finally:
            sender.close()

    answers, told = asyncio.run(main())
    # No forgery answered; the good beat acknowledged, which the control
    # does only for a beat it took.
    assert answers == 0 and told == 10


def test_a_removed_nodes_beats_are_not_taken_and_its_call_is_refused(
    control: Node, member: tuple[ClusterRecord, NodeCredentials]
) -> None:
    cluster, creds = member

    async def main() -> tuple[int | None, int | None, errors.MicrostackError | None]:
        session = await _session(cluster, creds)
        sender = await BeatSender.open(cluster.control_address, session)
        try:
            before = await sender.beat(5.0)
            await asyncio.to_thread(control.ctl, "remove", "node-1", "--force")
            after = await sender.beat(1.0)
        finally:
            sender.close()
        client = ControlClient(cluster, creds)
        refused = None
        try:
            await client.heartbeat_session(RUNNING, OURS)
        except errors.MicrostackError as exc:
            refused = exc
        finally:
            await client.close()
        return before, after, refused

    before, after, refused = asyncio.run(main())
    assert before == 10 and after is None
    assert isinstance(refused, errors.PermissionDenied)


def test_datagrams_off_the_member_beats_on_its_stream(
    make_node: Callable[..., Node], password_file: Path
) -> None:
    control = make_node("ctl", *FAST, "--heartbeat-datagrams", "off")
    control.init_control(password_file)
    compute = make_node("node-1")
    compute.join(control, password_file)
    first = _last_seen(control, "node-1")
    _wait(lambda: _last_seen(control, "node-1") != first, 10)
    time.sleep(4)
    assert _node(control, "node-1")["state"] == "active"
    assert compute.proc is not None and _peers(compute.proc.pid) == []
    assert "heartbeat datagrams to" in compute.log.read_text()  # said why, once


def test_a_member_whose_datagrams_are_dropped_falls_back_to_the_stream(
    make_node: Callable[..., Node], password_file: Path
) -> None:
    """Something on the way drops UDP to the control (an nftables rule on
    loopback, made and removed here): the first beat of the session is not
    acknowledged, the member says so and beats on its stream: still active."""
    if subprocess.run(["which", "nft"], capture_output=True).returncode != 0:
        pytest.skip("no nft here")
    control = make_node("ctl", *FAST)
    control.init_control(password_file)
    table = f"microstack_test_{control.cluster_port}"
    rule = (
        f"add table inet {table}\n"
        f"add chain inet {table} in {{ type filter hook input priority 0; }}\n"
        f"add rule inet {table} in ip daddr {control.address} "
        f"udp dport {control.cluster_port} drop\n"
    )
    subprocess.run(["nft", "-f", "-"], input=rule, text=True, check=True)
    try:
        compute = make_node("node-1")
        compute.join(control, password_file)
        _wait(lambda: "no beat acknowledged" in compute.log.read_text())
        first = _last_seen(control, "node-1")
        _wait(lambda: _last_seen(control, "node-1") != first, 10)
        time.sleep(4)
        assert _node(control, "node-1")["state"] == "active"
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], check=False)
