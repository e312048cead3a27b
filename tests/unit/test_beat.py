"""Heartbeat datagrams (trust.beat, control.beats, peers.beats): the format,
what the control takes (a good MAC, a new counter, a live session of a
certificate neither revoked nor expired) and what it drops (every flipped
byte, a replay, another session's key, a forged acknowledgement), all
without a daemon."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta

import pytest

from microstackd.control.beats import Beats
from microstackd.model import Role
from microstackd.peers.beats import BeatSender, DatagramSession
from microstackd.trust import beat
from microstackd.trust.x509 import Identity


def identity(name: str = "node-1", serial: int = 0xABC, days: float = 30) -> Identity:
    return Identity(name, Role.COMPUTE, serial, datetime.now(UTC) + timedelta(days=days))


class FakeStore:
    def __init__(self) -> None:
        self.revoked: set[str] = set()

    def is_revoked(self, serial: str) -> bool:
        return serial in self.revoked


def make_beats(store: FakeStore | None = None) -> tuple[Beats, list[str]]:
    seen: list[str] = []
    beats = Beats(store or FakeStore(), lambda i: seen.append(i.name), lambda: 10)  # type: ignore[arg-type]
    return beats, seen


class Transport:
    """Enough of a datagram transport for ``issue`` and ``datagram_received``."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, object]] = []

    def sendto(self, data: bytes, addr: object) -> None:
        self.sent.append((data, addr))

    def close(self) -> None:
        pass


def opened(beats: Beats) -> Transport:
    transport = Transport()
    beats.connection_made(transport)  # type: ignore[arg-type]
    return transport


# --------------------------------------------------------------- format --


def test_a_beat_opens_with_its_key_and_nothing_else() -> None:
    key_id, key = beat.new_key()
    data = beat.seal_beat(key_id, key, 7)
    assert len(data) == beat.BEAT_SIZE == 36
    assert beat.beat_key_id(data) == key_id
    assert beat.open_beat(data, key) == 7
    assert beat.open_beat(data, beat.new_key()[1]) is None
    assert beat.open_beat(data + b"\0", key) is None
    assert beat.open_beat(data[:-1], key) is None


def test_every_flipped_bit_of_a_beat_is_refused() -> None:
    key_id, key = beat.new_key()
    data = beat.seal_beat(key_id, key, 1)
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            assert beat.open_beat(bytes(bad), key) is None, (i, bit)


def test_a_beat_is_never_an_acknowledgement_nor_the_other_way_round() -> None:
    key_id, key = beat.new_key()
    ack = beat.seal_ack(key_id, key, 3, 10)
    assert len(ack) == beat.ACK_SIZE
    assert beat.open_ack(ack, key_id, key) == (3, 10)
    assert beat.open_beat(ack, key) is None
    assert beat.beat_key_id(ack) is None
    assert beat.open_ack(beat.seal_beat(key_id, key, 3), key_id, key) is None
    # The acknowledgement of another session, even under the same key.
    assert beat.open_ack(ack, key_id ^ 1, key) is None
    assert beat.open_ack(ack, key_id, beat.new_key()[1]) is None


def test_an_acknowledgement_carries_an_interval_within_its_field() -> None:
    key_id, key = beat.new_key()
    assert beat.open_ack(beat.seal_ack(key_id, key, 1, 0), key_id, key) == (1, 1)
    assert beat.open_ack(beat.seal_ack(key_id, key, 1, 10**6), key_id, key) == (
        1,
        beat.MAX_INTERVAL,
    )


# ------------------------------------------------------ the control side --


def test_a_good_beat_is_seen_and_acknowledged_once() -> None:
    beats, seen = make_beats()
    transport = opened(beats)
    issued = beats.issue(identity())
    assert issued is not None
    key_id, key, seconds = issued
    assert 0 < seconds <= beats.lifetime
    data = beat.seal_beat(key_id, key, 1)
    beats.datagram_received(data, ("10.0.0.2", 5000))
    beats.datagram_received(data, ("10.0.0.2", 5000))  # a replay
    assert seen == ["node-1"]
    assert len(transport.sent) == 1
    ack, addr = transport.sent[0]
    assert addr == ("10.0.0.2", 5000)
    assert beat.open_ack(ack, key_id, key) == (1, 10)
    assert (beats.taken, beats.dropped) == (1, 1)


def test_counters_only_go_up() -> None:
    beats, seen = make_beats()
    opened(beats)
    issued = beats.issue(identity())
    assert issued is not None
    key_id, key, _ = issued
    for counter in (5, 3, 5, 6):
        beats.datagram_received(beat.seal_beat(key_id, key, counter), ("h", 1))
    assert len(seen) == 2  # 5 and 6


def test_nothing_is_answered_to_what_is_not_a_beat_of_a_session() -> None:
    beats, seen = make_beats()
    transport = opened(beats)
    issued = beats.issue(identity())
    assert issued is not None
    key_id, key, _ = issued
    other_id, other_key = beat.new_key()
    for data in (
        b"",
        b"MSB1",
        b"\0" * 36,
        b"\xff" * 1500,
        beat.seal_beat(other_id, other_key, 1),  # no such session
        beat.seal_beat(key_id, other_key, 1),  # the right id, another key
        beat.seal_ack(key_id, key, 1, 10),  # an acknowledgement sent back
    ):
        beats.datagram_received(data, ("h", 1))
    assert seen == [] and transport.sent == []


def test_a_new_session_ends_the_members_previous_one() -> None:
    beats, seen = make_beats()
    opened(beats)
    first = beats.issue(identity())
    second = beats.issue(identity())
    assert first is not None and second is not None and first[0] != second[0]
    beats.datagram_received(beat.seal_beat(first[0], first[1], 1), ("h", 1))
    beats.datagram_received(beat.seal_beat(second[0], second[1], 1), ("h", 1))
    assert seen == ["node-1"] and beats.sessions() == 1


def test_one_members_key_never_makes_another_seen() -> None:
    beats, seen = make_beats()
    opened(beats)
    a = beats.issue(identity("node-1", 1))
    b = beats.issue(identity("node-2", 2))
    assert a is not None and b is not None
    beats.datagram_received(beat.seal_beat(b[0], a[1], 1), ("h", 1))
    assert seen == []
    beats.datagram_received(beat.seal_beat(b[0], b[1], 1), ("h", 1))
    assert seen == ["node-2"]


def test_a_revoked_certificate_ends_its_session_at_its_next_beat() -> None:
    store = FakeStore()
    beats, seen = make_beats(store)
    transport = opened(beats)
    issued = beats.issue(identity(serial=0xBEEF))
    assert issued is not None
    key_id, key, _ = issued
    store.revoked.add("beef")
    beats.datagram_received(beat.seal_beat(key_id, key, 1), ("h", 1))
    assert seen == [] and transport.sent == [] and beats.sessions() == 0


def test_no_beat_is_taken_past_the_session_or_the_certificate() -> None:
    beats, seen = make_beats()
    opened(beats)
    beats.lifetime = 0.05
    issued = beats.issue(identity())
    assert issued is not None
    time.sleep(0.1)
    beats.datagram_received(beat.seal_beat(issued[0], issued[1], 1), ("h", 1))
    beats.lifetime = 3600
    expired = beats.issue(identity("node-2", days=-1))
    assert expired is not None and expired[2] == 0  # good for no time at all
    beats.datagram_received(beat.seal_beat(expired[0], expired[1], 1), ("h", 1))
    assert seen == []


def test_no_session_is_issued_while_no_endpoint_is_open() -> None:
    beats, _ = make_beats()
    assert beats.issue(identity()) is None
    opened(beats)
    assert beats.issue(identity()) is not None
    beats.close()
    assert beats.issue(identity()) is None and beats.sessions() == 0


# -------------------------------------------------- over real sockets --


def test_a_sender_and_the_endpoint_over_loopback() -> None:
    async def main() -> tuple[list[int | None], list[str]]:
        beats, seen = make_beats()
        await beats.open("127.0.0.1", 0)
        try:
            issued = beats.issue(identity())
            assert issued is not None
            key_id, key, seconds = issued
            session = DatagramSession(key_id, key, beats.port, seconds)
            sender = await BeatSender.open("127.0.0.1", session)
            try:
                told = [await sender.beat(2.0) for _ in range(3)]
            finally:
                sender.close()
            return told, seen
        finally:
            beats.close()

    told, seen = asyncio.run(main())
    assert told == [10, 10, 10] and seen == ["node-1"] * 3


def test_a_sender_takes_no_forged_acknowledgement() -> None:
    """A peer that answers every beat with what it can make without the key
    (an acknowledgement under another key, the beat echoed, a stale counter
    sealed right): the beat counts as unanswered."""

    async def main() -> list[int | None]:
        key_id, key = beat.new_key()
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        loop = asyncio.get_running_loop()
        session = DatagramSession(key_id, key, server.getsockname()[1], 60)
        sender = await BeatSender.open("127.0.0.1", session)

        async def answer(make: bytes) -> None:
            _, addr = await loop.sock_recvfrom(server, 64)
            await loop.sock_sendto(server, make, addr)

        try:
            told = []
            for forged in (
                beat.seal_ack(key_id, beat.new_key()[1], 1, 10),
                beat.seal_beat(key_id, key, 2),
                beat.seal_ack(key_id, key, 1, 10),  # the counter before this beat's (3)
            ):
                answering = asyncio.ensure_future(answer(forged))
                told.append(await sender.beat(0.5))
                await answering
            return told
        finally:
            sender.close()
            server.close()

    assert asyncio.run(main()) == [None, None, None]


def test_a_beat_to_a_closed_port_is_unanswered_not_an_error() -> None:
    async def main() -> int | None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nobody there: ICMP port unreachable
        key_id, key = beat.new_key()
        sender = await BeatSender.open("127.0.0.1", DatagramSession(key_id, key, port, 60))
        try:
            first = await sender.beat(0.3)
            return first or await sender.beat(0.3)
        finally:
            sender.close()

    assert asyncio.run(main()) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_endpoint_binds_either_family(host: str) -> None:
    async def main() -> int:
        beats, _ = make_beats()
        await beats.open(host, 0)
        try:
            return beats.port
        finally:
            beats.close()

    assert asyncio.run(main()) > 0


def test_a_port_taken_is_a_warning_and_no_sessions(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[int, object]:
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        taken.bind(("127.0.0.1", 0))
        try:
            beats, _ = make_beats()
            await beats.open("127.0.0.1", taken.getsockname()[1])
            return beats.port, beats.issue(identity())
        finally:
            taken.close()

    assert asyncio.run(main()) == (0, None)
    assert "heartbeat datagrams off" in caplog.text
