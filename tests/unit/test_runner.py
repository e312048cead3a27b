"""The runner's group commit: nothing published before it is durable, few commits per join."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from microstackd import errors
from microstackd.enrolment import machine as enrolment
from microstackd.enrolment.events import EventBus
from microstackd.enrolment.runner import Runner, Skipped, StepAction, StepContext
from microstackd.model import EventRecord, NodeRecord, NodeState, NodeUpdate, Role, StepState
from microstackd.store import Store

NODE = "node-1"


class SpyStore(Store):
    """Counts commits of records; can be told to fail like a full disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.commits: list[list[EventRecord]] = []
        self.fail: type[errors.StorageError] | None = None

    def record_all(
        self,
        events: Sequence[EventRecord],
        updates: Sequence[NodeUpdate] = (),
        nodes: Sequence[tuple[NodeRecord, str | None]] = (),
    ) -> list[EventRecord]:
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


#: The store, bus and runner each test drives.
World = tuple[SpyStore, CheckingBus, Runner]


@pytest.fixture
def world(tmp_path: Path) -> World:
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


def test_steps_that_never_wait_share_one_commit(
    world: World,
) -> None:
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


def test_what_a_step_waits_for_is_published_while_it_waits(
    world: World,
) -> None:
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


def test_a_failed_commit_publishes_nothing_and_stops_the_enrolment(
    world: World,
) -> None:
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
    world: World, monkeypatch: pytest.MonkeyPatch
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


def test_cancel_lands_what_was_recorded_first(world: World) -> None:
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


# ------------------------------------------------ steps run together --

#: "first", then lane (a1, a2) beside lane (b1), then done.
GROUP_PLAN = ("first", "a1", "a2", "b1", enrolment.DONE)
TOGETHER = ((("a1", "a2"), ("b1",)),)


async def _finish_plan(runner: Runner, actions: dict[str, StepAction]) -> None:
    runner.ensure_running(NODE, GROUP_PLAN, actions, together=TOGETHER)
    while runner.running(NODE):
        await asyncio.sleep(0.001)
    await asyncio.sleep(0)


async def _stopped_once_started(
    runner: Runner, actions: dict[str, StepAction], started: asyncio.Event
) -> None:
    """Run the group plan until ``started`` is set, then stop it as the
    daemon's stop does (its running steps cancelled)."""
    runner.ensure_running(NODE, GROUP_PLAN, actions, together=TOGETHER)
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.01)
    runner.cancel(NODE)
    await asyncio.sleep(0.01)


def _done(message: str) -> StepAction:
    async def action(ctx: StepContext) -> str:
        return message

    return action


def test_the_steps_of_a_group_run_at_once_each_with_its_own_events(
    world: World,
) -> None:
    store, bus, runner = world
    both = asyncio.Event()
    under_way: set[str] = set()

    def meets(name: str) -> StepAction:
        async def action(ctx: StepContext) -> str:
            under_way.add(name)
            if {"a1", "b1"} <= under_way:
                both.set()
            await ctx.progress(f"{name} half way", 50)
            # Each waits for the other: run one after the other, they would hang.
            await asyncio.wait_for(both.wait(), 5)
            return f"{name} finished"

        return action

    asyncio.run(_finish_plan(runner, {"a1": meets("a1"), "b1": meets("b1")}))
    told = [(e.step, e.state, e.message) for e in bus.published]
    for name in ("a1", "b1"):
        assert (name, StepState.RUNNING, name) in told
        assert (name, StepState.RUNNING, f"{name} half way") in told
        assert (name, StepState.DONE, f"{name} finished") in told
    # a2 follows a1 in its lane; done follows the whole group.
    steps = [e.step for e in bus.published]
    assert steps.index("a2") > steps.index("a1")
    done_at = steps.index(enrolment.DONE)
    assert all(i < done_at for i, s in enumerate(steps) if s in ("a1", "a2", "b1"))
    assert bus.published[-1].final and bus.published[-1].state is StepState.DONE
    node = store.node(NODE)
    assert node is not None and node.state is NodeState.ACTIVE


def test_a_failure_in_a_group_lets_the_other_lane_finish_and_fails_naming_it(
    world: World,
) -> None:
    store, bus, runner = world
    ran: list[str] = []

    async def fails(ctx: StepContext) -> str:
        ran.append("a1")
        raise errors.ServiceFailed("a1: exited with status 1; last log lines (setup-a1.log):\nboom")

    async def slow(ctx: StepContext) -> str:
        await asyncio.sleep(0.05)  # still running when a1 fails
        ran.append("b1")
        return "b1 finished"

    async def never(ctx: StepContext) -> str:
        ran.append("a2")
        return "a2 ran"

    asyncio.run(_finish_plan(runner, {"a1": fails, "a2": never, "b1": slow}))
    assert ran == ["a1", "b1"]  # b1 finished; nothing started after the failure
    states = store.step_states(NODE)
    assert states["a1"] is StepState.FAILED and states["b1"] is StepState.DONE
    assert states.get("a2", StepState.PENDING) is StepState.PENDING
    last = bus.published[-1]
    assert last.final and last.state is StepState.FAILED and last.step == "a1"
    assert "setup-a1.log" in last.message
    node = store.node(NODE)
    assert node is not None and node.state is NodeState.FAILED
    assert node.message.startswith("a1: ")
    # Run again: only the failed step and what comes after it run; b1 is not redone.
    ran.clear()
    asyncio.run(_finish_plan(runner, {"a1": _done("a1 ok"), "a2": never, "b1": slow}))
    assert ran == ["a2"]
    assert bus.published[-1].final and bus.published[-1].state is StepState.DONE


def test_an_init_interrupted_inside_a_group_resumes_each_lane_where_it_stopped(
    world: World,
) -> None:
    store, bus, runner = world
    ran: list[str] = []
    started = asyncio.Event()

    def counted(name: str, block: bool = False) -> StepAction:
        async def action(ctx: StepContext) -> str:
            ran.append(name)
            if block:
                started.set()
                await asyncio.Event().wait()  # until cancelled (the daemon stops)
            return f"{name} finished"

        return action

    actions = {"a1": counted("a1"), "a2": counted("a2", block=True), "b1": counted("b1")}
    asyncio.run(_stopped_once_started(runner, actions, started))
    states = store.step_states(NODE)
    assert states["a1"] is StepState.DONE and states["b1"] is StepState.DONE
    assert states["a2"] is StepState.RUNNING  # under way when it stopped
    # A new runner, as after a restart, from the store: only a2 runs again.
    ran.clear()
    again = Runner(store, bus)
    actions = {"a1": counted("a1"), "a2": counted("a2"), "b1": counted("b1")}
    asyncio.run(_finish_plan(again, actions))
    assert ran == ["a2"]
    assert bus.published[-1].final and bus.published[-1].state is StepState.DONE


def test_a_streamed_plan_runs_its_groups_and_raises_the_failure(
    world: World,
) -> None:
    store, bus, runner = world

    async def fails(ctx: StepContext) -> str:
        raise errors.ServiceFailed("b1 broke")

    async def go() -> list[tuple[str, StepState]]:
        seen = []
        with pytest.raises(errors.ServiceFailed, match="b1 broke"):
            async for record in runner.stream(NODE, GROUP_PLAN, {"b1": fails}, together=TOGETHER):
                seen.append((record.step, record.state))
        return seen

    seen = asyncio.run(go())
    assert ("b1", StepState.FAILED) in seen and ("a1", StepState.DONE) in seen
    assert store.events(NODE) == []  # a stream records nothing


def test_new_nodes_share_the_group_commit_and_wait_for_it(tmp_path: Path) -> None:
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


def test_a_step_knows_whether_an_earlier_run_left_it_unfinished(
    world: World,
) -> None:
    """``StepContext.redone``: true for a step under way when the run stopped
    (as after a SIGKILL) or one that failed, when a new run redoes it; false
    for a step's first attempt."""
    store, bus, runner = world
    seen: dict[str, list[bool]] = {}
    started = asyncio.Event()

    def noting(name: str, *, block: bool = False, fail: bool = False) -> StepAction:
        async def action(ctx: StepContext) -> str:
            seen.setdefault(name, []).append(ctx.redone)
            if block:
                started.set()
                await asyncio.Event().wait()  # until cancelled (the daemon stops)
            if fail:
                raise errors.ServiceFailed(f"{name} broke")
            return f"{name} finished"

        return action

    actions = {"a1": noting("a1"), "a2": noting("a2", block=True), "b1": noting("b1", fail=True)}
    asyncio.run(_stopped_once_started(runner, actions, started))
    states = store.step_states(NODE)
    assert states["a2"] is StepState.RUNNING and states["b1"] is StepState.FAILED
    again = Runner(store, bus)  # as after a restart
    asyncio.run(_finish_plan(again, {n: noting(n) for n in ("a1", "a2", "b1")}))
    assert seen == {"a1": [False], "a2": [False, True], "b1": [False, True]}
    # A plan streamed (recording nothing) never redoes anything.
    seen.clear()

    async def stream() -> None:
        actions = {n: noting(n) for n in ("first", "a1", "a2", "b1")}
        async for _ in again.stream("other", GROUP_PLAN, actions, together=TOGETHER):
            pass

    asyncio.run(stream())
    assert all(v == [False] for v in seen.values()) and len(seen) == 4
