"""A member's heartbeats: on one stream, at the control's interval, at once
when its services changed (the agent's ``changed`` Signal, wired to
``beat_now`` as daemon.py does), every beat declaring the member's version;
a new stream when its certificate was renewed."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from microstackd import errors
from microstackd.control.beats import Beats
from microstackd.enrolment.events import Signal
from microstackd.member import heartbeat
from microstackd.member.heartbeat import Heartbeats
from microstackd.model import ClusterRecord, Role, ServiceRecord, Software
from microstackd.peers.beats import DatagramSession
from microstackd.trust.x509 import Identity

CLUSTER = ClusterRecord("c1", Role.COMPUTE, "control", "127.0.0.1", 10002, 10003, "ff", 0.0)
#: The control's interval: far longer than any test waits.
AN_HOUR = 3600
SOFTWARE = Software("0.1.0", "v1")


class FakeStore:
    #: What ``credentials`` returns: a renewal replaces it.
    creds = "old"

    def cluster(self) -> ClusterRecord:
        return CLUSTER

    def credentials(self) -> str:
        return self.creds


class FakeStream:
    """The control's side of ``ControlClient.heartbeats``, as ``HeartbeatStream``."""

    def __init__(self, control: type[FakeControl], credentials: object, software: Software) -> None:
        self._control = control
        self._credentials = credentials
        self._software = software
        self.interval = AN_HOUR
        self.unimplemented = control.unimplemented
        self.answered = asyncio.Event()
        self.ended: asyncio.Future[errors.MicrostackError] = (
            asyncio.get_running_loop().create_future()
        )
        if control.unimplemented:
            self.ended.set_result(errors.MicrostackError("Method not found!"))
        elif control.refuse:
            self.ended.set_result(errors.PermissionDenied("revoked"))
        self.answered.set()
        control.streams.append(self)

    async def beat(self, services: list[ServiceRecord]) -> None:
        if self.ended.done():
            return
        self._control.declared.append(self._software)
        await self._control.beats.put(("stream", services))
        if self._control.skew:
            self.ended.set_result(
                errors.VersionSkew("node-1 runs microstackd 0.9.0: upgrade the control first")
            )

    def revoke(self) -> None:
        """The control ends this stream: its certificate was revoked."""
        if not self.ended.done():
            self.ended.set_result(errors.PermissionDenied("certificate revoked"))

    async def close(self) -> None:
        self._control.streams_closed += 1


class FakeControl:
    """The control's side of ``ControlClient``: what each beat carried, and how."""

    beats: asyncio.Queue[tuple[str, list[ServiceRecord]]]
    #: The versions each beat declared.
    declared: list[Software] = []
    #: The streams opened, and the credentials of each.
    streams: list[FakeStream] = []
    #: An older control: no heartbeat stream.
    unimplemented = False
    #: This node was removed: the stream ends refused.
    refuse = False
    #: Refuse every beat on a stream or by call as outside the skew window.
    skew = False
    #: Refuse the calls that ask for a datagram session so.
    skew_sessions = False
    streams_closed = 0
    #: Those calls' services, as they come.
    sessions: asyncio.Queue[list[ServiceRecord]]
    #: The calls that asked for a datagram session (none is offered here:
    #: the member beats on its stream; test_beat_datagrams offers them).
    session_calls: list[list[ServiceRecord]] = []

    def __init__(self, cluster: ClusterRecord, credentials: object) -> None:
        self._credentials = credentials

    #: Offers the datagram session of each such call (None: offers none).
    offer: Callable[[], DatagramSession | None] = staticmethod(lambda: None)

    async def heartbeat_session(
        self, services: list[ServiceRecord], software: Software
    ) -> tuple[int, DatagramSession | None]:
        FakeControl.session_calls.append(services)
        await FakeControl.sessions.put(services)
        if FakeControl.skew_sessions:
            raise errors.VersionSkew("node-1 runs microstackd 0.9.0: upgrade the control first")
        if FakeControl.refuse:
            raise errors.PermissionDenied("revoked")
        return AN_HOUR, FakeControl.offer()

    def heartbeats(self, software: Software) -> FakeStream:
        return FakeStream(FakeControl, self._credentials, software)

    async def heartbeat(self, services: list[ServiceRecord], software: Software) -> int:
        FakeControl.declared.append(software)
        await FakeControl.beats.put(("call", services))
        if FakeControl.skew:
            raise errors.VersionSkew("node-1 runs microstackd 0.9.0: upgrade the control first")
        return AN_HOUR

    async def close(self) -> None:
        pass


@pytest.fixture
def control(monkeypatch: pytest.MonkeyPatch) -> type[FakeControl]:
    monkeypatch.setattr(heartbeat, "ControlClient", FakeControl)
    monkeypatch.setattr(FakeControl, "unimplemented", False)
    monkeypatch.setattr(FakeControl, "declared", [])
    monkeypatch.setattr(FakeControl, "streams", [])
    monkeypatch.setattr(FakeControl, "refuse", False)
    monkeypatch.setattr(FakeControl, "skew", False)
    monkeypatch.setattr(FakeControl, "streams_closed", 0)
    monkeypatch.setattr(FakeControl, "session_calls", [])
    monkeypatch.setattr(FakeControl, "skew_sessions", False)
    monkeypatch.setattr(FakeControl, "sessions", asyncio.Queue(), raising=False)
    monkeypatch.setattr(FakeControl, "offer", staticmethod(lambda: None))
    return FakeControl


def test_a_change_is_sent_at_once_not_at_the_next_interval(control: type[FakeControl]) -> None:
    services = [ServiceRecord("nova-compute", "running")]

    async def states() -> list[ServiceRecord]:
        return list(services)

    async def main() -> list[tuple[str, list[ServiceRecord]]]:
        control.beats = asyncio.Queue()
        changed = Signal("services changed")
        beats = Heartbeats(FakeStore(), states, SOFTWARE)  # type: ignore[arg-type]
        changed.subscribe(beats.beat_now)
        beats.start()
        try:
            first = await asyncio.wait_for(control.beats.get(), 30)
            services[0] = ServiceRecord("nova-compute", "stopped")
            await changed.emit()
            second = await asyncio.wait_for(control.beats.get(), 30)
            quiet = control.beats.empty()
        finally:
            await beats.stop()
        assert quiet
        return [first, second]

    first, second = asyncio.run(main())
    assert [(how, [s.state for s in beat]) for how, beat in (first, second)] == [
        ("stream", ["running"]),
        ("stream", ["stopped"]),
    ]
    assert control.declared == [SOFTWARE, SOFTWARE]
    assert len(control.streams) == 1  # both on the one stream


async def _none() -> list[ServiceRecord]:
    return []


async def _beat_changed_beat(
    seen: asyncio.Queue[Any], services: Callable[[], Awaitable[list[ServiceRecord]]]
) -> None:
    """Heartbeats started: one beat arrives in ``seen``, ``beat_now`` (a
    change), and the next arrives."""
    beats = Heartbeats(FakeStore(), services, SOFTWARE)  # type: ignore[arg-type]
    beats.start()
    try:
        await asyncio.wait_for(seen.get(), 30)
        await beats.beat_now()
        await asyncio.wait_for(seen.get(), 30)
    finally:
        await beats.stop()


def test_without_a_change_the_next_beat_waits_for_the_interval(control: type[FakeControl]) -> None:
    async def main() -> bool:
        control.beats = asyncio.Queue()
        beats = Heartbeats(FakeStore(), _none, SOFTWARE)  # type: ignore[arg-type]
        beats.start()
        try:
            await asyncio.wait_for(control.beats.get(), 30)
            await asyncio.sleep(0.2)
            return control.beats.empty()
        finally:
            await beats.stop()

    assert asyncio.run(main())


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "call"])
def test_a_beat_refused_for_its_version_does_not_end_the_heartbeats(
    control: type[FakeControl], stream: bool
) -> None:
    """Unlike a revoked certificate: once one side is upgraded, the control
    takes the member's beats again, so the member keeps sending them (on a
    stream: the refusal ends it, and the next beat opens another)."""
    control.skew = True
    control.unimplemented = not stream

    async def main() -> None:
        control.beats = asyncio.Queue()
        await _beat_changed_beat(control.beats, _none)

    asyncio.run(main())
    assert control.declared == [SOFTWARE, SOFTWARE]
    if stream:
        assert len(control.streams) == 2


RUNNING = [ServiceRecord("nova-compute", "running")]


async def _running() -> list[ServiceRecord]:
    return list(RUNNING)


async def _first_beat(control: type[FakeControl]) -> tuple[str, list[ServiceRecord]]:
    """Heartbeats started with RUNNING: how the first beat reached the
    control (on a stream, or by call) and what it carried."""
    control.beats = asyncio.Queue()
    beats = Heartbeats(FakeStore(), _running, SOFTWARE)  # type: ignore[arg-type]
    beats.start()
    try:
        return await asyncio.wait_for(control.beats.get(), 30)
    finally:
        await beats.stop()


def test_a_control_without_the_stream_gets_one_call_per_beat(control: type[FakeControl]) -> None:
    control.unimplemented = True

    async def main() -> tuple[str, list[ServiceRecord]]:
        return await _first_beat(control)

    assert asyncio.run(main()) == ("call", RUNNING)
    assert control.declared == [SOFTWARE]


def test_a_refused_stream_stops_the_heartbeats(control: type[FakeControl]) -> None:
    """The control ends the stream PERMISSION_DENIED once this node is removed."""
    control.refuse = True

    async def main() -> bool:
        control.beats = asyncio.Queue()
        beats = Heartbeats(FakeStore(), _running, SOFTWARE)  # type: ignore[arg-type]
        beats.start()
        assert beats._loop._task is not None
        await asyncio.wait_for(beats._loop._task, 30)  # returns: no beat is tried again
        return control.beats.empty()

    assert asyncio.run(main())


def _beat_renew_beat(
    control: type[FakeControl], renew: Callable[[FakeStore, Heartbeats], Awaitable[None]]
) -> None:
    """One beat under the old certificate, ``renew``, and the next beat."""
    store = FakeStore()

    async def main() -> None:
        control.beats = asyncio.Queue()
        beats = Heartbeats(store, _running, SOFTWARE)  # type: ignore[arg-type]
        beats.start()
        try:
            await asyncio.wait_for(control.beats.get(), 30)
            await renew(store, beats)
            await asyncio.wait_for(control.beats.get(), 30)
        finally:
            await beats.stop()

    asyncio.run(main())


def test_a_renewed_certificate_beats_on_a_new_stream_at_once(control: type[FakeControl]) -> None:
    """The renewal (new credentials, then ``beat_now`` as daemon.py wires
    ``renewed``): the stream opened under the old certificate is closed and
    the next beat opens one under the new, whose first call makes it the
    node's on the control."""

    async def renewed(store: FakeStore, beats: Heartbeats) -> None:
        store.creds = "new"
        await beats.beat_now()

    _beat_renew_beat(control, renewed)
    assert [s._credentials for s in control.streams] == ["old", "new"]
    assert control.streams_closed == 2


def test_the_old_stream_revoked_after_a_renewal_opens_a_new_one(
    control: type[FakeControl],
) -> None:
    """Another call with the new certificate came first (the control revoked
    the old serial, which ends its stream PERMISSION_DENIED): this node was
    not removed, so it does not stop; it beats on a stream with the new one."""

    async def revoked(store: FakeStore, beats: Heartbeats) -> None:
        store.creds = "new"
        control.streams[0].revoke()

    _beat_renew_beat(control, revoked)
    assert [s._credentials for s in control.streams] == ["old", "new"]


# ------------------------------------------------------------ datagrams --


class Endpoint:
    """The control's datagram endpoint (control.beats.Beats) on loopback,
    asking for a beat every ``interval`` seconds; offers its sessions."""

    def __init__(self, interval: int = 1) -> None:
        self.seen: list[str] = []
        self.beats = Beats(_NoRevocations(), lambda i: self.seen.append(i.name), lambda: interval)  # type: ignore[arg-type]

    def offer(self) -> DatagramSession | None:
        issued = self.beats.issue(
            Identity("node-1", Role.COMPUTE, 1, datetime.now(UTC) + timedelta(days=1))
        )
        if issued is None:
            return None
        return DatagramSession(issued[0], issued[1], self.beats.port, issued[2])


class _NoRevocations:
    def is_revoked(self, serial: str) -> bool:
        return False


async def _until(check: Callable[[], bool], seconds: float = 20) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.02)


def test_one_call_then_a_datagram_every_interval_and_no_stream(
    control: type[FakeControl],
) -> None:
    endpoint = Endpoint(interval=1)
    control.offer = staticmethod(endpoint.offer)

    async def main() -> None:
        await endpoint.beats.open("127.0.0.1", 0)
        control.beats = asyncio.Queue()
        beats = Heartbeats(FakeStore(), _running, SOFTWARE)  # type: ignore[arg-type]
        beats.start()
        try:
            # The first datagram goes right after the call, then one a second.
            await _until(lambda: len(endpoint.seen) >= 3)
        finally:
            await beats.stop()
            endpoint.beats.close()

    asyncio.run(main())
    assert control.session_calls == [RUNNING]  # its services, once
    assert control.streams == [] and control.beats.empty()


def test_a_change_is_a_new_call_and_a_new_session(control: type[FakeControl]) -> None:
    endpoint = Endpoint(interval=AN_HOUR)
    control.offer = staticmethod(endpoint.offer)
    services = [ServiceRecord("nova-compute", "running")]

    async def states() -> list[ServiceRecord]:
        return list(services)

    async def main() -> None:
        await endpoint.beats.open("127.0.0.1", 0)
        beats = Heartbeats(FakeStore(), states, SOFTWARE)  # type: ignore[arg-type]
        beats.start()
        try:
            await _until(lambda: len(endpoint.seen) == 1)
            services[0] = ServiceRecord("nova-compute", "stopped")
            await beats.beat_now()
            await _until(lambda: len(endpoint.seen) == 2)
        finally:
            await beats.stop()
            endpoint.beats.close()

    asyncio.run(main())
    assert [[s.state for s in call] for call in control.session_calls] == [
        ["running"],
        ["stopped"],
    ]
    assert endpoint.beats.sessions() == 0  # closed; there was one at a time


def test_beats_no_longer_acknowledged_make_a_new_call(control: type[FakeControl]) -> None:
    """The control restarted (its sessions are gone): the next beat goes
    unanswered twice, and the member calls for a new key at once."""
    endpoint = Endpoint(interval=1)
    control.offer = staticmethod(endpoint.offer)

    async def main() -> None:
        await endpoint.beats.open("127.0.0.1", 0)
        beats = Heartbeats(FakeStore(), _running, SOFTWARE)  # type: ignore[arg-type]
        beats.start()
        try:
            await _until(lambda: len(endpoint.seen) >= 2)
            endpoint.beats.forget("node-1")  # as a restart would
            await _until(lambda: len(control.session_calls) == 2)
            await _until(lambda: len(endpoint.seen) >= 4)
        finally:
            await beats.stop()
            endpoint.beats.close()

    asyncio.run(main())
    assert control.streams == []


def test_datagrams_that_do_not_get_through_fall_back_to_the_stream(
    control: type[FakeControl], caplog: pytest.LogCaptureFixture
) -> None:
    """A session offered, but its first beat never acknowledged (a firewall
    drops UDP on the way): the member beats on its stream, and says so."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    control.offer = staticmethod(lambda: DatagramSession(1, b"k" * 32, port, 3600))

    async def main() -> tuple[str, list[ServiceRecord]]:
        return await _first_beat(control)

    try:
        assert asyncio.run(main()) == ("stream", RUNNING)
    finally:
        silent.close()
    assert len(control.session_calls) == 1
    assert "no beat acknowledged; beating on a stream" in caplog.text


def test_a_refused_session_call_stops_the_heartbeats(control: type[FakeControl]) -> None:
    """The call that would open a session is refused PERMISSION_DENIED: this
    node was removed; nothing more is sent."""
    control.refuse = True

    async def main() -> None:
        beats = Heartbeats(FakeStore(), _running, SOFTWARE)  # type: ignore[arg-type]
        beats.start()
        assert beats._loop._task is not None
        await asyncio.wait_for(beats._loop._task, 30)

    asyncio.run(main())
    assert len(control.session_calls) == 1 and control.streams == []


def test_a_session_call_refused_for_its_version_is_tried_again(
    control: type[FakeControl],
) -> None:
    control.skew_sessions = True

    async def main() -> None:
        control.sessions = asyncio.Queue()
        await _beat_changed_beat(control.sessions, _running)

    asyncio.run(main())
    assert control.streams == []
