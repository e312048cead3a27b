"""The enrolment plan and its state machine: pure, no I/O, no clock.

Rules:

1. A plan is an ordered tuple of step names. Steps run one at a time, in
   order; a step starts only when every step before it is finished (``done``
   or ``skipped``). The last step of every plan is ``done``. A plan may run
   some consecutive steps together (``together``: a group of lanes): the
   first step of every lane starts at once, each lane's next step when its
   previous one is finished, and the step after the group when every lane
   is. A step that fails in a group starts nothing more; the steps under
   way finish, and then the plan fails, naming the step that failed.
2. A step moves only along ``TRANSITIONS``: one row per state, naming each
   event that may happen to a step in it and the state it leads to.
   Anything else is a bug in the code driving the machine and raises
   ``LocalProtocolError`` at once.
3. The machine says what to do; the driver does it, in order. Every
   ``Record`` must be persisted before it is shown to anyone, and ``Finish``
   (the node's new state) comes before the final ``Record``, so a client that
   sees the final event and asks for the status sees the new state.
4. Resuming is starting: the machine is built from the persisted step states
   and continues from the first unfinished step (in a group: each lane's),
   so a restart at any point redoes at most the steps that were running
   (steps are idempotent).

The driver (``microstackd.enrolment.runner``) feeds step outcomes in as events and
executes the commands that come out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from microstackd.model import NodeState, StepState

ADMIT = "admit"
ISSUE_CONFIG = "issue-config"
CONFIGURE_NODE = "configure-node"
ADMIT_TO_CLOUD = "admit-to-cloud"
DONE = "done"
CREATE_CLUSTER = "create-cluster"

#: A compute node's enrolment, run by the control.
COMPUTE_PLAN: tuple[str, ...] = (ADMIT, ISSUE_CONFIG, CONFIGURE_NODE, ADMIT_TO_CLOUD, DONE)
#: A control node's own initialisation, run by itself; the control role's
#: steps (``microstackd.control.plane``) come between these two.
CONTROL_PLAN: tuple[str, ...] = (CREATE_CLUSTER, DONE)

#: What each step is doing, for the operator watching it start.
TITLES: Mapping[str, str] = {
    CREATE_CLUSTER: "creating the cluster CA, certificates and password verifier",
    ADMIT: "admitting the node",
    ISSUE_CONFIG: "issuing the compute configuration",
    CONFIGURE_NODE: "configuring the node's services",
    ADMIT_TO_CLOUD: "admitting the host to Nova",
    DONE: "finishing",
}

# What may happen to a step (the events, by name; ``handle`` maps each
# event object to one of them).
START = "start"  # the step becomes the current one and its action runs
INTERRUPTED = "interrupted"  # found under way after a restart: it runs again
PROGRESS = "progress"
WAIT = "wait"  # progress that waits on something (the node's agent, Nova)
SUCCEEDED = "succeeded"
SKIPPED = "skipped"
FAILED = "failed"

_S = StepState
_UNDER_WAY = {
    PROGRESS: _S.RUNNING,
    WAIT: _S.WAITING,
    SUCCEEDED: _S.DONE,
    SKIPPED: _S.SKIPPED,
    FAILED: _S.FAILED,
    INTERRUPTED: _S.FAILED,
}
#: state -> {event: the state it leads to}.
TRANSITIONS: Mapping[StepState, Mapping[str, StepState]] = {
    _S.PENDING: {START: _S.RUNNING},
    _S.RUNNING: _UNDER_WAY,
    _S.WAITING: _UNDER_WAY,
    _S.FAILED: {START: _S.RUNNING},
    _S.DONE: {},
    _S.SKIPPED: {},
}


class LocalProtocolError(Exception):
    """The code driving the machine broke its rules (a bug in this node)."""


# ---------------------------------------------------------------- events --


@dataclass(frozen=True)
class StepProgress:
    """A running step reports progress (or that it is waiting on something)."""

    step: str
    message: str
    percent: int = 0
    waiting: bool = False


@dataclass(frozen=True)
class StepSucceeded:
    step: str
    message: str
    skipped: bool = False


@dataclass(frozen=True)
class StepFailed:
    step: str
    message: str


Event = StepProgress | StepSucceeded | StepFailed

# -------------------------------------------------------------- commands --


@dataclass(frozen=True)
class Record:
    """Persist this step change, then publish it."""

    step: str
    state: StepState
    message: str
    percent: int = 0
    final: bool = False


@dataclass(frozen=True)
class Run:
    """Execute this step's action and feed its outcome back in."""

    step: str


@dataclass(frozen=True)
class Finish:
    """Set the node's state: the enrolment is over."""

    state: NodeState
    message: str = ""


Command = Record | Run | Finish


#: Steps run together: lanes, each a run of the plan's steps one after the other.
Group = tuple[tuple[str, ...], ...]


class Enrolment:
    """One node's enrolment through ``plan``, resumed from ``states``; the
    groups of ``together`` run their lanes side by side (rule 1)."""

    def __init__(
        self,
        plan: tuple[str, ...],
        states: Mapping[str, StepState],
        titles: Mapping[str, str] | None = None,
        together: Sequence[Group] = (),
    ) -> None:
        if not plan or plan[-1] != DONE:
            raise LocalProtocolError(f"a plan must end with {DONE!r}: {plan!r}")
        self.plan = plan
        #: Titles of the plan's own steps (a role's), besides ``TITLES``.
        self.titles: Mapping[str, str] = titles or {}
        self.states: dict[str, StepState] = {
            step: states.get(step, StepState.PENDING) for step in plan
        }
        #: The plan as stages, in order: each a group of lanes (a step alone: one lane).
        self._stages: list[Group] = _stages(plan, together)
        #: The steps of the current stage that failed, with their messages.
        self._failed: list[tuple[str, str]] = []

    def _stage(self) -> Group | None:
        """The first stage with a step unfinished."""
        return next(
            (g for g in self._stages if any(not self.states[s].finished for s in _steps(g))),
            None,
        )

    @property
    def current(self) -> str | None:
        """The first unfinished step, or None when the plan is complete."""
        return next((s for s in self.plan if not self.states[s].finished), None)

    @property
    def complete(self) -> bool:
        return self.current is None

    @property
    def running(self) -> tuple[str, ...]:
        """The steps under way (running or waiting), in the plan's order."""
        return tuple(s for s in self.plan if self.states[s] in _UNDER_WAY_STATES)

    def _next_steps(self, stage: Group) -> list[str]:
        """The first unfinished step of each of ``stage``'s lanes."""
        found = []
        for lane in stage:
            step = next((s for s in lane if not self.states[s].finished), None)
            if step is not None:
                found.append(step)
        return found

    def _move(self, step: str, event: str) -> StepState:
        """Apply ``event`` to ``step``, one of the current stage's next steps; its new state."""
        stage = self._stage()
        if stage is None or step not in self._next_steps(stage):
            raise LocalProtocolError(f"step {step!r} is not a current step ({self.current!r})")
        frm = self.states[step]
        to = TRANSITIONS[frm].get(event)
        if to is None:
            raise LocalProtocolError(f"step {step!r} cannot be {event} when it is {frm}")
        self.states[step] = to
        return to

    def _start(self, step: str) -> list[Command]:
        self._move(step, START)
        title = self.titles.get(step) or TITLES.get(step, step)
        return [Record(step, StepState.RUNNING, title), Run(step)]

    def _start_stage(self) -> list[Command]:
        """Start every step that may start now (the current stage's next
        steps not under way); finish the plan if it is complete."""
        stage = self._stage()
        if stage is None:
            return [Finish(NodeState.ACTIVE)]
        commands: list[Command] = []
        for step in self._next_steps(stage):
            if self.states[step] not in _UNDER_WAY_STATES:
                commands += self._start(step)
        return commands

    def resume(self) -> list[Command]:
        """Where to go from the persisted states (a fresh start included)."""
        stage = self._stage()
        if stage is None:
            return [
                Finish(NodeState.ACTIVE),
                Record(DONE, StepState.DONE, "already enrolled", 100, final=True),
            ]
        for step in self._next_steps(stage):
            if self.states[step] in _UNDER_WAY_STATES:
                # Interrupted mid-step (a crash or restart): run it again.
                self._move(step, INTERRUPTED)
        return self._start_stage()

    def handle(self, event: Event) -> list[Command]:
        if isinstance(event, StepProgress):
            state = self._move(event.step, WAIT if event.waiting else PROGRESS)
            return [Record(event.step, state, event.message, event.percent)]
        if isinstance(event, StepFailed):
            self._move(event.step, FAILED)
            self._failed.append((event.step, event.message))
            if self.running:  # the others finish first (rule 1)
                return [Record(event.step, StepState.FAILED, event.message)]
            return self._fail()
        state = self._move(event.step, SKIPPED if event.skipped else SUCCEEDED)
        if self._failed:
            done = Record(event.step, state, event.message, 100)
            return [done] if self.running else [done, *self._fail()]
        following = self._start_stage()
        if following == [Finish(NodeState.ACTIVE)]:
            return [*following, Record(event.step, state, event.message, 100, final=True)]
        return [Record(event.step, state, event.message, 100), *following]

    def _fail(self) -> list[Command]:
        """The plan failed: named by its first failed step (and any other)."""
        (step, message), others = self._failed[0], self._failed[1:]
        also = "; ".join(f"{s}: {m}" for s, m in others)
        summary = f"{step}: {message}" + (f" (and {also})" if also else "")
        return [
            Finish(NodeState.FAILED, summary),
            Record(step, StepState.FAILED, message, final=True),
        ]


_UNDER_WAY_STATES = (StepState.RUNNING, StepState.WAITING)


def _steps(group: Group) -> tuple[str, ...]:
    return tuple(s for lane in group for s in lane)


def _stages(plan: tuple[str, ...], together: Sequence[Group]) -> list[Group]:
    """``plan`` as stages: each group of ``together`` where its steps are
    (consecutive, in their lanes' order), every other step a stage alone."""
    starts: dict[str, Group] = {}
    seen: set[str] = set()
    for group in together:
        steps = _steps(group)
        missing = [s for s in steps if s not in plan]
        if missing:
            raise LocalProtocolError(f"steps {missing!r} of a group are not in the plan")
        if seen & set(steps) or len(set(steps)) != len(steps):
            raise LocalProtocolError(f"a step is in more than one group or lane: {group!r}")
        seen.update(steps)
        first = plan.index(steps[0])
        if plan[first : first + len(steps)] != steps:
            raise LocalProtocolError(
                f"a group must be consecutive steps of the plan, in its lanes' order: {group!r}"
            )
        starts[steps[0]] = tuple(lane for lane in group if lane)
    stages: list[Group] = []
    index = 0
    while index < len(plan):
        group = starts.get(plan[index], ((plan[index],),))
        stages.append(group)
        index += len(_steps(group))
    return stages
