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
from microstackd.model import ClusterRecord, Role, ServiceRecord, Software

CLUSTER = ClusterRecord("c1", Role.COMPUTE, "control", "10.0.0.1", 10002, 10003, "ff", 0.0)
#: The control's interval: far longer than any test waits.
AN_HOUR = 3600
SOFTWARE = Software("0.1.0", "v1")


class FakeStore:
    def cluster(self) -> ClusterRecord:
        return CLUSTER

    def credentials(self) -> None:
        return None


class FakeControl:
    """The control's side of ``ControlClient.heartbeat``: what each beat carried."""

    beats: asyncio.Queue[list[ServiceRecord]]
    #: The versions each beat declared.
    declared: list[Software] = []
    #: Refuse every beat as outside the skew window.
    refuse = False

    def __init__(self, cluster: ClusterRecord, credentials: object) -> None:
        pass

    async def heartbeat(self, services: list[ServiceRecord], software: Software) -> int:
        FakeControl.declared.append(software)
        await FakeControl.beats.put(services)
        if FakeControl.refuse:
            raise errors.VersionSkew("node-1 runs microstackd 0.9.0: upgrade the control first")
        return AN_HOUR

    async def close(self) -> None:
        pass


@pytest.fixture
def control(monkeypatch: pytest.MonkeyPatch) -> type[FakeControl]:
    monkeypatch.setattr(heartbeat, "ControlClient", FakeControl)
    monkeypatch.setattr(FakeControl, "declared", [])
    monkeypatch.setattr(FakeControl, "refuse", False)
    return FakeControl


def test_a_change_is_sent_at_once_not_at_the_next_interval(control: type[FakeControl]) -> None:
    services = [ServiceRecord("nova-compute", "running")]

    async def states() -> list[ServiceRecord]:
        return list(services)

    async def main() -> list[list[ServiceRecord]]:
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
    assert [s.state for s in first] == ["running"]
    assert [s.state for s in second] == ["stopped"]


def test_without_a_change_the_next_beat_waits_for_the_interval(control: type[FakeControl]) -> None:
    async def states() -> list[ServiceRecord]:
        return []

    async def main() -> bool:
        control.beats = asyncio.Queue()
        beats = Heartbeats(FakeStore(), states, SOFTWARE)  # type: ignore[arg-type]
        beats.start()
        try:
            await asyncio.wait_for(control.beats.get(), 30)
            await asyncio.sleep(0.2)
            return control.beats.empty()
        finally:
            await beats.stop()

    assert asyncio.run(main())


def test_a_beat_refused_for_its_version_does_not_end_the_heartbeats(
    control: type[FakeControl],
) -> None:
    """Unlike a revoked certificate: once one side is upgraded, the control
    takes the member's beats again, so the member keeps sending them."""
    control.refuse = True

    async def states() -> list[ServiceRecord]:
        return []

    async def main() -> None:
        control.beats = asyncio.Queue()
        beats = Heartbeats(FakeStore(), states, SOFTWARE)  # type: ignore[arg-type]
        beats.start()
        try:
            await asyncio.wait_for(control.beats.get(), 30)
            await beats.beat_now()
            await asyncio.wait_for(control.beats.get(), 30)
        finally:
            await beats.stop()

    asyncio.run(main())
    assert control.declared == [SOFTWARE, SOFTWARE]
