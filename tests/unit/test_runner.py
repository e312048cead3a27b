"""The runner's group commit: nothing published before it is durable, few commits per join."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from microstackd import errors
from microstackd.enrolment import machine as enrolment
from microstackd.enrolment.events import EventBus
from microstackd.enrolment.runner import Runner, Skipped, StepAction, StepContext
from microstackd.model import EventRecord, NodeRecord, NodeState, Role, StepState
from microstackd.store import Store

NODE = "node-1"


class SpyStore(Store):
    """Counts commits of records; can be told to fail like a full disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.commits: list[list[EventRecord]] = []
        self.fail: type[errors.StorageError] | None = None

    def record_all(self, events, updates=(), nodes=()):
        if self.fail is not None:
            raise self.fail("cannot write: the disk is full; nothing was changed")
        recorded = super().record_all(events, updates, nodes)
        self.commits.append(recorded)
        return recorded


class CheckingBus(EventBus):
    """Asserts that every published event is already in the database."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.published: list[EventRecord] = []
        #: Events that could not be recorded, told to live followers only.
        self.unrecorded: list[EventRecord] = []
        self._store = store

    def publish(self, event: EventRecord) -> None:
        if event.seq == 0:
            assert event.final and event.state is StepState.FAILED, event
            self.unrecorded.append(event)
            super().publish(event)
            return
        on_disk = {e.seq for e in self._store.events(event.node)}
        assert event.seq in on_disk, f"event {event.seq} published before it was committed"
        self.published.append(event)
        super().publish(event)


@pytest.fixture
def world(tmp_path: Path) -> tuple[SpyStore, CheckingBus, Runner]:
    store = SpyStore(tmp_path)
    store.put_node(
        NodeRecord(
            name=NODE,
            role=Role.COMPUTE,
            address="10.0.0.2",
            hostname=NODE,
            state=NodeState.ENROLLING,
            message="",
            cert_serial="aa",
            cert_not_after=1.0,
            joined=1.0,
        )
    )
    bus = CheckingBus(store)
    return store, bus, Runner(store, bus)


async def _finish(runner: Runner, actions: dict[str, StepAction]) -> None:
    runner.ensure_running(NODE, enrolment.COMPUTE_PLAN, actions)
    while runner.running(NODE):
        await asyncio.sleep(0.001)
    await asyncio.sleep(0)  # the last group commit


def test_steps_that_never_wait_share_one_commit(world) -> None:
    store, bus, runner = world

    async def skipped(ctx: StepContext) -> str | Skipped:
        return Skipped("nothing to do")

    asyncio.run(_finish(runner, {enrolment.CONFIGURE_NODE: skipped}))
    assert len(store.commits) == 1
    seqs = [e.seq for e in bus.published]
    assert seqs == list(range(1, len(seqs) + 1))
    assert bus.published[-1].final
    node = store.node(NODE)
    assert node is not None and node.state is NodeState.ACTIVE
    assert set(store.step_states(NODE).values()) <= {StepState.DONE, StepState.SKIPPED}


def test_what_a_step_waits_for_is_published_while_it_waits(world) -> None:
    store, bus, runner = world
    seen_while_waiting: list[str] = []

    async def slow(ctx: StepContext) -> str:
        await ctx.progress("starting nova-compute", 50)
        await asyncio.sleep(0.01)
        seen_while_waiting.extend(e.message for e in bus.published)
        return "configured"

    asyncio.run(_finish(runner, {enrolment.CONFIGURE_NODE: slow}))
    assert "starting nova-compute" in seen_while_waiting
    assert len(store.commits) == 2  # before the wait and after it


def test_a_failed_commit_publishes_nothing_and_stops_the_enrolment(world) -> None:
    store, bus, runner = world
    store.fail = errors.StorageError
    asyncio.run(_finish(runner, {}))
    assert bus.published == []
    assert not runner.running(NODE)
    assert store.events(NODE) == []
    # Its followers are told it stopped, and why, by an event that is not recorded.
    (told,) = bus.unrecorded
    assert told.step == enrolment.ADMIT and "could not record" in told.message
    # Once the store takes writes again, the enrolment resumes from the start.
    store.fail = None
    asyncio.run(_finish(runner, {}))
    assert bus.published[-1].final


def test_a_full_disk_stops_the_enrolment_and_it_resumes_once_there_is_room(
    world, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, bus, runner = world
    monkeypatch.setattr("microstackd.enrolment.runner.SPACE_POLL", (0.01, 0.02))
    room = [0]
    monkeypatch.setattr(store, "free_bytes", lambda: room[0])
    store.fail = errors.DiskFull

    async def go() -> None:
        follower = bus.follow(NODE)
        runner.ensure_running(NODE, enrolment.COMPUTE_PLAN, {})
        told = [e async for e in follower]
        assert [e.seq for e in told] == [0] and told[0].final
        assert "disk is full" in told[0].message and "resumes by itself" in told[0].message
        store.fail = None  # writes would work, but the disk has no room yet: it waits
        await asyncio.sleep(0.1)
        assert not runner.running(NODE) and store.events(NODE) == []
        room[0] = 1 << 30
        for _ in range(500):
            if bus.published and bus.published[-1].final:
                break
            await asyncio.sleep(0.01)

    asyncio.run(go())
    assert bus.published[-1].final and bus.published[-1].state is StepState.DONE
    node = store.node(NODE)
    assert node is not None and node.state is NodeState.ACTIVE
    runner.stop()


def test_cancel_lands_what_was_recorded_first(world) -> None:
    store, bus, runner = world
    release = asyncio.Event()

    async def blocked(ctx: StepContext) -> str:
        await ctx.progress("waiting for the agent", 10, waiting=True)
        runner.cancel(NODE)  # as a removal does, without yielding first
        store.remove_node(NODE, "aa", 2.0)
        await release.wait()
        return "never"

    async def go() -> None:
        runner.ensure_running(NODE, enrolment.COMPUTE_PLAN, {enrolment.CONFIGURE_NODE: blocked})
        for _ in range(100):
            await asyncio.sleep(0.001)

    asyncio.run(go())
    node = store.node(NODE)
    assert node is not None and node.state is NodeState.REMOVED
    assert any(e.message == "waiting for the agent" for e in store.events(NODE))


def test_new_nodes_share_the_group_commit_and_wait_for_it(tmp_path):
    """``commit_node``: records of nodes bootstrapping together are one
    commit with the events queued in the same loop turn; each caller returns
    only once its record is on disk, and a failed commit fails them all."""

    def node(name: str) -> NodeRecord:
        return NodeRecord(name, Role.COMPUTE, "10.0.0.9", name, NodeState.PENDING, "", "aa", 1, 1)

    store = SpyStore(tmp_path)
    runner = Runner(store, CheckingBus(store))

    async def main() -> None:
        async def commit(name: str) -> bool:
            await runner.commit_node(node(name))
            return store.node(name) is not None

        assert list(await asyncio.gather(commit("a"), commit("b"), commit("c"))) == [True] * 3
        assert len(store.commits) == 1
        store.fail = errors.StorageError
        with pytest.raises(errors.StorageError):
            await runner.commit_node(node("d"))
        assert store.node("d") is None

    asyncio.run(main())
