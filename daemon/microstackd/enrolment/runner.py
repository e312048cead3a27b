"""The step engine: drives an ``enrolment.machine.Enrolment`` through a plan,
runs each step's action, and sends every record the machine emits on. The
only place where the pure machine meets I/O, and the one engine every plan
runs on: a compute's enrolment and the control's init (recorded: persisted,
then published, resumed from the store after a restart) and a node's agent
applying a role (streamed to the caller, who re-runs it whole: every step of
a role is idempotent).

Records are group-committed: everything recorded until the event loop next
gets control (a step finishing, the next starting, progress, the node's
state; for every node enrolling at the time) goes into one durable SQLite
transaction, and only then is published. Nothing is reported before it is on
disk (store rule 1), and a join costs a few ``fdatasync`` calls instead of
one per record. A step may therefore start before the record saying so is
durable; that is safe because steps are idempotent and an unrecorded step is
simply run again on resume.

A full disk stops the enrolments it touches without losing them: their
followers get a final, failed event that is not persisted (seq 0) saying
the control's disk is full, and the runner resumes them from the store
(their unrecorded step runs again) once there is room again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from microstackd import errors
from microstackd.enrolment import machine as enrolment
from microstackd.enrolment.events import EventBus
from microstackd.enrolment.machine import Command, Enrolment, Finish, Group, Record, Run
from microstackd.model import EventRecord, NodeRecord, NodeState, NodeUpdate, StepState
from microstackd.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    """A step's action returns this when it deliberately did nothing."""

    reason: str


Sink = Callable[[Record | Finish], None]


@dataclass(eq=False)
class _Run:
    """One run of a plan: its machine, and where the records it emits go."""

    node: str
    machine: Enrolment
    actions: Mapping[str, StepAction]
    sink: Sink
    #: The error that failed the run (a streamed run raises it to its caller).
    error: errors.MicrostackError | None = field(default=None)
    #: The steps an earlier run started and did not finish (``StepContext.redone``).
    unfinished: frozenset[str] = frozenset()


#: A step's persisted states that say an earlier run started it and did not finish it.
_UNFINISHED = (StepState.RUNNING, StepState.WAITING, StepState.FAILED)

#: Free space (bytes) under which stalled enrolments wait rather than resume.
ROOM_TO_RESUME = 1 << 20
#: Seconds between looks at the free space while enrolments wait for it.
SPACE_POLL = (1.0, 10.0)


@dataclass(frozen=True)
class _Plan:
    """What it takes to run a node's enrolment again."""

    plan: tuple[str, ...]
    actions: Mapping[str, StepAction]
    titles: Mapping[str, str] | None
    together: Sequence[Group] = ()


class StepContext:
    """What a step action may do: report progress for its own step."""

    def __init__(self, runner: Runner, run: _Run, step: str) -> None:
        self.node = run.node
        self.step = step
        #: An earlier run started this step and did not finish it: it was
        #: under way when the daemon stopped (or was killed), or it failed.
        #: What it had done may be half done (its action may have to undo it).
        self.redone = step in run.unfinished
        self._runner = runner
        self._run = run

    async def progress(self, message: str, percent: int = 0, *, waiting: bool = False) -> None:
        event = enrolment.StepProgress(self.step, message, percent, waiting)
        await self._runner._execute(self._run, self._run.machine.handle(event))

    def update_node(self, state: NodeState | None = None, *, seen: bool = False) -> None:
        """Change this node's record in the same commit as the step's events."""
        self._runner._queue(
            NodeUpdate(self.node, state, last_seen=self._runner._clock() if seen else None)
        )


StepAction = Callable[[StepContext], Awaitable[str | Skipped]]


class Runner:
    """Runs at most one enrolment per node at a time."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        clock: Callable[[], float] = time.time,
        step_delays: Mapping[str, float] | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        self._step_delays = dict(step_delays or {})
        self._tasks: dict[str, asyncio.Task[None]] = {}
        #: What each node's enrolment runs, to run it again after a stall.
        self._plans: dict[str, _Plan] = {}
        #: Enrolments stopped by a full disk, to resume once there is room.
        self._stalled: dict[str, _Plan] = {}
        self._space_watch: asyncio.Task[None] | None = None
        self._pending_events: list[EventRecord] = []
        self._pending_updates: list[NodeUpdate] = []
        #: New node records (with the serial each replaces) and who waits for them.
        self._pending_nodes: list[tuple[NodeRecord, str | None]] = []
        self._node_waiters: list[asyncio.Future[None]] = []
        self._flush_handle: asyncio.Handle | None = None

    def running(self, node: str) -> bool:
        task = self._tasks.get(node)
        return task is not None and not task.done()

    def cancel(self, node: str) -> None:
        # What the enrolment recorded lands before anything else is written
        # about the node (a removal must not be overwritten by a late commit).
        self.flush()
        task = self._tasks.pop(node, None)
        if task is not None:
            task.cancel()

    def ensure_running(
        self,
        node: str,
        plan: tuple[str, ...],
        actions: Mapping[str, StepAction],
        titles: Mapping[str, str] | None = None,
        together: Sequence[Group] = (),
    ) -> None:
        """Start (or resume) ``node``'s enrolment unless it is already running;
        the groups of ``together`` run their lanes at once (``machine``, rule 1)."""
        if self.running(node):
            return
        task = asyncio.get_running_loop().create_task(
            self._run(node, _Plan(plan, actions, titles, together))
        )
        self._tasks[node] = task
        task.add_done_callback(lambda _t: self._tasks.pop(node, None))

    async def _run(self, node: str, plan: _Plan) -> None:
        self.flush()
        states = self._store.step_states(node)
        machine = Enrolment(plan.plan, states, plan.titles, plan.together)
        run = _Run(
            node,
            machine,
            plan.actions,
            lambda command: self._queue_record(node, command),
            unfinished=frozenset(s for s, state in states.items() if state in _UNFINISHED),
        )
        self._plans[node] = plan
        try:
            await self._execute(run, machine.resume())
        except Exception:
            log.exception("enrolment of %s stopped", node)
            raise
        if isinstance(run.error, errors.DiskFull):
            # A step failed for want of space (its failure was recorded):
            # the cause goes away by itself, and then so does the failure.
            self._stall(node)

    async def stream(
        self,
        node: str,
        plan: tuple[str, ...],
        actions: Mapping[str, StepAction],
        titles: Mapping[str, str] | None = None,
        together: Sequence[Group] = (),
    ) -> AsyncIterator[Record]:
        """Run ``plan`` from its first step, recording nothing: yield each record
        as the machine emits it; a failed step raises its error after its record."""
        queue: asyncio.Queue[Record | None] = asyncio.Queue()

        def sink(command: Record | Finish) -> None:
            if isinstance(command, Record):
                queue.put_nowait(command)

        machine = Enrolment(plan, {}, titles, together)
        run = _Run(node, machine, actions, sink)

        async def go() -> None:
            try:
                await self._execute(run, machine.resume())
            finally:
                queue.put_nowait(None)

        task = asyncio.get_running_loop().create_task(go())
        try:
            while (record := await queue.get()) is not None:
                yield record
            await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if run.error is not None:
            raise run.error

    async def _execute(self, run: _Run, commands: list[Command]) -> None:
        """Do ``commands`` in order: records go to the sink, steps run — the
        steps started together (a group's) at once, each going on with what
        its outcome says in its own task; this returns once all of them have."""
        pending = list(commands)
        while pending:
            steps = []
            for command in pending:
                if isinstance(command, Run):
                    steps.append(command.step)
                else:
                    run.sink(command)
            if len(steps) > 1:
                # Cancelled (the daemon stops, the node is removed): so is each.
                await asyncio.gather(*(self._run_and_go_on(run, step) for step in steps))
                return
            pending = await self._run_step(run, steps[0]) if steps else []

    async def _run_and_go_on(self, run: _Run, step: str) -> None:
        await self._execute(run, await self._run_step(run, step))

    async def _run_step(self, run: _Run, step: str) -> list[Command]:
        action = run.actions.get(step)
        node, machine = run.node, run.machine
        if step in self._step_delays:
            # Land the step's "running" record first: whoever waits for this
            # line (the fault tests) may rely on the step being visibly under way.
            self.flush()
            log.warning("fault injection: pausing before step=%s node=%s", step, node)
            await asyncio.sleep(self._step_delays[step])
        try:
            outcome: str | Skipped = (
                "done" if action is None else await action(StepContext(self, run, step))
            )
        except errors.MicrostackError as exc:
            log.warning("step failed node=%s step=%s error=%s", node, step, exc.message)
            run.error = run.error or exc  # a group's first failure is the run's
            return machine.handle(enrolment.StepFailed(step, exc.message))
        except Exception as exc:
            log.exception("step crashed node=%s step=%s", node, step)
            run.error = run.error or errors.MicrostackError(f"internal error: {exc}")
            return machine.handle(enrolment.StepFailed(step, f"internal error: {exc}"))
        if isinstance(outcome, Skipped):
            return machine.handle(enrolment.StepSucceeded(step, outcome.reason, skipped=True))
        return machine.handle(enrolment.StepSucceeded(step, outcome))

    def _queue_record(self, node: str, command: Record | Finish) -> None:
        """Queue for the next group commit, which persists, then publishes."""
        if isinstance(command, Finish):
            self._queue(NodeUpdate(node, command.state, command.message))
            return
        self._pending_events.append(
            EventRecord(
                node=node,
                seq=0,
                step=command.step,
                state=command.state,
                message=command.message,
                percent=command.percent,
                time=self._clock(),
                final=command.final,
            )
        )
        if command.state is StepState.WAITING:
            # What the enrolment waits for shows in status too.
            self._queue(NodeUpdate(node, NodeState.ENROLLING, command.message))
        self._queue()

    async def commit_node(self, node: NodeRecord, replaces_serial: str | None = None) -> None:
        """Record a new node (as ``Store.put_node``) in the next group commit;
        return once it is on disk. When many nodes bootstrap at once their
        records share one ``fdatasync`` with everything else recorded in that
        loop turn, instead of one each on the event loop."""
        waiter = asyncio.get_running_loop().create_future()
        self._pending_nodes.append((node, replaces_serial))
        self._node_waiters.append(waiter)
        self._queue()
        await waiter

    def _queue(self, update: NodeUpdate | None = None) -> None:
        if update is not None:
            self._pending_updates.append(update)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        nodes = {e.node for e in self._pending_events} | {u.name for u in self._pending_updates}
        steps: dict[str, str] = {}  # the first step of each node's that is not recorded
        for event in self._pending_events:
            steps.setdefault(event.node, event.step)
        try:
            self.flush()
        except Exception as exc:  # a full disk, or the store closed under a stopping daemon
            # Those enrolments stop (nothing of theirs is reported that is not
            # on disk); their followers are told why, and a full disk's are
            # resumed from the store (re-running the unrecorded steps) once
            # there is room: any other's when the node retries.
            reason = exc.message if isinstance(exc, errors.MicrostackError) else repr(exc)
            log.error("cannot record enrolment progress of %s: %s", sorted(nodes), reason)
            for node in sorted(nodes):
                self._stop(node, steps.get(node, "enrolment"), exc, reason)

    def _stop(self, node: str, step: str, exc: Exception, reason: str) -> None:
        """End ``node``'s run: a final, failed event its followers see live
        (seq 0: it is not recorded), and a stall until there is room again."""
        task = self._tasks.pop(node, None)
        if task is not None:
            task.cancel()
        if isinstance(exc, errors.DiskFull):
            message = (
                f"the control node's disk is full, so this enrolment could not be recorded "
                f"({reason}); it resumes by itself once space is freed there: then run the "
                "same command again to follow it"
            )
            self._stall(node)
        else:
            message = f"the control node could not record this enrolment ({reason})"
        self._bus.publish(
            EventRecord(
                node=node, seq=0, step=step, state=StepState.FAILED, message=message,
                percent=0, time=self._clock(), final=True,
            )
        )  # fmt: skip

    def _stall(self, node: str) -> None:
        plan = self._plans.get(node)
        if plan is None:
            return
        self._stalled[node] = plan
        if self._space_watch is None or self._space_watch.done():
            self._space_watch = asyncio.get_running_loop().create_task(self._await_space())

    async def _await_space(self) -> None:
        """Resume the enrolments a full disk stopped, once there is room."""
        delay = SPACE_POLL[0]
        while self._stalled:
            await asyncio.sleep(delay)
            delay = min(SPACE_POLL[1], delay * 2)
            free = self._store.free_bytes()
            if free < ROOM_TO_RESUME:
                continue
            stalled, self._stalled = self._stalled, {}
            log.info("space is back (%d KiB free): resuming %s", free // 1024, sorted(stalled))
            for node, plan in stalled.items():
                self.ensure_running(node, plan.plan, plan.actions, plan.titles, plan.together)
            delay = SPACE_POLL[0]

    def stop(self) -> None:
        """The daemon stops: no more resuming (a restart resumes from the store)."""
        self._stalled.clear()
        if self._space_watch is not None:
            self._space_watch.cancel()

    def flush(self) -> None:
        """Commit everything queued in one transaction, then publish it."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        events, self._pending_events = self._pending_events, []
        updates, self._pending_updates = self._pending_updates, []
        nodes, self._pending_nodes = self._pending_nodes, []
        waiters, self._node_waiters = self._node_waiters, []
        if not events and not updates and not nodes:
            return
        try:
            recorded = self._store.record_all(events, updates, nodes)
        except BaseException as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            raise
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        for event in recorded:
            self._bus.publish(event)
