"""Drives an ``enrolment.Enrolment``: runs step actions, persists and
publishes every record, sets the node's state. The only place where the
pure machine meets I/O.
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
from microstackd.model import EventRecord, NodeState, StepState
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

    def running(self, node: str) -> bool:
        task = self._tasks.get(node)
        return task is not None and not task.done()

    def cancel(self, node: str) -> None:
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
            if isinstance(command, Record):
                self.emit(node, command)
                if command.state is StepState.WAITING:
                    # What the enrolment waits for shows in status too.
                    self._store.set_node_state(node, NodeState.ENROLLING, command.message)
            elif isinstance(command, Finish):
                self._store.set_node_state(node, command.state, command.message)
            elif isinstance(command, Run):
                assert actions is not None, "only the top level runs steps"
                pending[:0] = await self._run_step(node, machine, command.step, actions)

    async def _run_step(
        self, node: str, machine: Enrolment, step: str, actions: Mapping[str, StepAction]
    ) -> list[Command]:
        action = actions.get(step)
        if step in self._step_delays:
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

    def emit(self, node: str, record: Record) -> EventRecord:
        """Persist, then publish."""
        event = self._store.record(
            EventRecord(
                node=node,
                seq=0,
                step=record.step,
                state=record.state,
                message=record.message,
                percent=record.percent,
                time=self._clock(),
                final=record.final,
            )
        )
        self._bus.publish(event)
        return event
