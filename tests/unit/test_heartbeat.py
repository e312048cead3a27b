"""A member's heartbeats: at the control's interval, and at once when its
services changed (the agent's ``changed`` Signal, wired to ``beat_now`` as
daemon.py does)."""

from __future__ import annotations

import asyncio

import pytest

from microstackd import errors
from microstackd.enrolment.events import Signal
from microstackd.member import heartbeat
from microstackd.member.heartbeat import Heartbeats
from microstackd.model import ClusterRecord, Role, ServiceRecord

CLUSTER = ClusterRecord("c1", Role.COMPUTE, "control", "10.0.0.1", 10002, 10003, "ff", 0.0)
#: The control's interval: far longer than any test waits.
AN_HOUR = 3600


class FakeStore:
    def cluster(self) -> ClusterRecord:
        return CLUSTER

    def credentials(self) -> None:
        return None


class FakeStream:
    """The control's side of ``ControlClient.heartbeats``, as ``HeartbeatStream``."""

    def __init__(self, control: type[FakeControl]) -> None:
        self._control = control
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

    async def beat(self, services: list[ServiceRecord]) -> None:
        if not self.ended.done():
            await self._control.beats.put(("stream", services))

    async def close(self) -> None:
        self._control.streams_closed += 1


class FakeControl:
    """The control's side of ``ControlClient``: what each beat carried, and how."""

    beats: asyncio.Queue[tuple[str, list[ServiceRecord]]]
    #: An older control: no heartbeat stream.
    unimplemented = False
    #: This node was removed: the stream ends refused.
    refuse = False
    streams_closed = 0

    def __init__(self, cluster: ClusterRecord, credentials: object) -> None:
        pass

    def heartbeats(self) -> FakeStream:
        return FakeStream(FakeControl)

    async def heartbeat(self, services: list[ServiceRecord]) -> int:
        await FakeControl.beats.put(("call", services))
        return AN_HOUR

    async def close(self) -> None:
        pass


@pytest.fixture
def control(monkeypatch: pytest.MonkeyPatch) -> type[FakeControl]:
    monkeypatch.setattr(heartbeat, "ControlClient", FakeControl)
    monkeypatch.setattr(FakeControl, "unimplemented", False)
    monkeypatch.setattr(FakeControl, "refuse", False)
    return FakeControl


def test_a_change_is_sent_at_once_not_at_the_next_interval(control: type[FakeControl]) -> None:
    services = [ServiceRecord("nova-compute", "running")]

    async def states() -> list[ServiceRecord]:
        return list(services)

    async def main() -> list[tuple[str, list[ServiceRecord]]]:
        control.beats = asyncio.Queue()
        changed = Signal("services changed")
        beats = Heartbeats(FakeStore(), states)  # type: ignore[arg-type]
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


def test_without_a_change_the_next_beat_waits_for_the_interval(control: type[FakeControl]) -> None:
    async def states() -> list[ServiceRecord]:
        return []

    async def main() -> bool:
        control.beats = asyncio.Queue()
        beats = Heartbeats(FakeStore(), states)  # type: ignore[arg-type]
        beats.start()
        try:
            await asyncio.wait_for(control.beats.get(), 30)
            await asyncio.sleep(0.2)
            return control.beats.empty()
        finally:
            await beats.stop()

    assert asyncio.run(main())


RUNNING = [ServiceRecord("nova-compute", "running")]


async def _running() -> list[ServiceRecord]:
    return list(RUNNING)


def test_a_control_without_the_stream_gets_one_call_per_beat(control: type[FakeControl]) -> None:
    control.unimplemented = True

    async def main() -> tuple[str, list[ServiceRecord]]:
        control.beats = asyncio.Queue()
        beats = Heartbeats(FakeStore(), _running)  # type: ignore[arg-type]
        beats.start()
        try:
            return await asyncio.wait_for(control.beats.get(), 30)
        finally:
            await beats.stop()

    assert asyncio.run(main()) == ("call", RUNNING)


def test_a_refused_stream_stops_the_heartbeats(control: type[FakeControl]) -> None:
    """The control ends the stream PERMISSION_DENIED once this node is removed."""
    control.refuse = True

    async def main() -> bool:
        control.beats = asyncio.Queue()
        beats = Heartbeats(FakeStore(), _running)  # type: ignore[arg-type]
        beats.start()
        assert beats._task is not None
        await asyncio.wait_for(beats._task, 30)  # returns: no beat is tried again
        return control.beats.empty()

    assert asyncio.run(main())
