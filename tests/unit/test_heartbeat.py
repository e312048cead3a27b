"""A member's heartbeats: at the control's interval, and at once when its
services changed (the agent's ``changed`` Signal, wired to ``beat_now`` as
daemon.py does)."""

from __future__ import annotations

import asyncio

import pytest

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


class FakeControl:
    """The control's side of ``ControlClient.heartbeat``: what each beat carried."""

    beats: asyncio.Queue[list[ServiceRecord]]

    def __init__(self, cluster: ClusterRecord, credentials: object) -> None:
        pass

    async def heartbeat(self, services: list[ServiceRecord]) -> int:
        await FakeControl.beats.put(services)
        return AN_HOUR

    async def close(self) -> None:
        pass


@pytest.fixture
def control(monkeypatch: pytest.MonkeyPatch) -> type[FakeControl]:
    monkeypatch.setattr(heartbeat, "ControlClient", FakeControl)
    return FakeControl


def test_a_change_is_sent_at_once_not_at_the_next_interval(control: type[FakeControl]) -> None:
    services = [ServiceRecord("nova-compute", "running")]

    async def states() -> list[ServiceRecord]:
        return list(services)

    async def main() -> list[list[ServiceRecord]]:
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
    assert [s.state for s in first] == ["running"]
    assert [s.state for s in second] == ["stopped"]


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
