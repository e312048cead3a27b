"""Drives an ``enrolment.Enrolment``: runs step actions, persists and
publishes every record, sets the node's state. The only place where the
pure machine meets I/O.

Records are group-committed: everything recorded until the event loop next
gets control (a step finishing, the next starting, progress, the node's
state; for every node enrolling at the time) goes into one durable SQLite
transaction, and only then is published. Nothing is reported before it is on
disk (store rule 1), and a join costs a few ``fdatasync`` calls instead of
one per record. A step may therefore start before the record saying so is
durable; that is safe because steps are idempotent and an unrecorded step is
simply run again on resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from microstackd import enrolment, errors
from microstackd.enrolment import Command, Enrolment, Finish, Record, Run
from microstackd.events import EventBus
from microstackd.model import EventRecord, NodeState, NodeUpdate, StepState
from microstackd.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    """A step's action returns this when it deliberately did nothing."""

    reason: str


class StepContext:
    """What a step action may do: report progress for its own step."""

    def __init__(self, runner: Runner, node: str, step: str, machine: Enrolment) -> None:
        self.node = node
        self.step = step
        self._runner = runner
        self._machine = machine

    async def progress(self, message: str, percent: int = 0, *, waiting: bool = False) -> None:
        event = enrolment.StepProgress(self.step, message, percent, waiting)
        await self._runner._execute(self.node, self._machine, self._machine.handle(event))

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
        self._pending_events: list[EventRecord] = []
        self._pending_updates: list[NodeUpdate] = []
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
    ) -> None:
        """Start (or resume) ``node``'s enrolment unless it is already running."""
        if self.running(node):
            return
        task = asyncio.get_running_loop().create_task(self._run(node, plan, actions, titles))
        self._tasks[node] = task
        task.add_done_callback(lambda _t: self._tasks.pop(node, None))

    async def _run(
        self,
        node: str,
        plan: tuple[str, ...],
        actions: Mapping[str, StepAction],
        titles: Mapping[str, str] | None = None,
    ) -> None:
        self.flush()
        machine = Enrolment(plan, self._store.step_states(node), titles)
        try:
            await self._execute(node, machine, machine.resume(), actions)
        except Exception:
            log.exception("enrolment of %s stopped", node)
            raise

    async def _execute(
        self,
        node: str,
        machine: Enrolment,
        commands: list[Command],
        actions: Mapping[str, StepAction] | None = None,
    ) -> None:
        pending = list(commands)
        while pending:
            command = pending.pop(0)
            if isinstance(command, Run):
                assert actions is not None, "only the top level runs steps"
                pending[:0] = await self._run_step(node, machine, command.step, actions)
            else:
                self._queue_record(node, command)

    async def _run_step(
        self, node: str, machine: Enrolment, step: str, actions: Mapping[str, StepAction]
    ) -> list[Command]:
        action = actions.get(step)
        if step in self._step_delays:
            # Land the step's "running" record first: whoever waits for this
            # line (the fault tests) may rely on the step being visibly under way.
            self.flush()
            log.warning("fault injection: pausing before step=%s node=%s", step, node)
            await asyncio.sleep(self._step_delays[step])
        try:
            outcome: str | Skipped = (
                "done" if action is None else await action(StepContext(self, node, step, machine))
            )
        except errors.MicrostackError as exc:
            log.warning("step failed node=%s step=%s error=%s", node, step, exc.message)
            return machine.handle(enrolment.StepFailed(step, exc.message))
        except Exception as exc:
            log.exception("step crashed node=%s step=%s", node, step)
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

    def _queue(self, update: NodeUpdate | None = None) -> None:
        if update is not None:
            self._pending_updates.append(update)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_handle = None
        nodes = {e.node for e in self._pending_events} | {u.name for u in self._pending_updates}
        try:
            self.flush()
        except Exception as exc:  # a full disk, or the store closed under a stopping daemon
            # As when a step's own write fails: those enrolments stop, and
            # resume (re-running the unrecorded steps) once the node retries.
            reason = exc.message if isinstance(exc, errors.MicrostackError) else repr(exc)
            log.error("cannot record enrolment progress of %s: %s", sorted(nodes), reason)
            for node in nodes:
                task = self._tasks.pop(node, None)
                if task is not None:
                    task.cancel()

    def flush(self) -> None:
        """Commit everything queued in one transaction, then publish it."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        events, self._pending_events = self._pending_events, []
        updates, self._pending_updates = self._pending_updates, []
        if not events and not updates:
            return
        for event in self._store.record_all(events, updates):
            self._bus.publish(event)
