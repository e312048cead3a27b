"""The enrolment plan and its state machine: pure, no I/O, no clock.

Rules:

1. A plan is an ordered tuple of step names. Steps run one at a time, in
   order; a step starts only when every step before it is finished (``done``
   or ``skipped``). The last step of every plan is ``done``.
2. A step moves only along ``TRANSITIONS``: one row per state, naming each
   event that may happen to a step in it and the state it leads to.
   Anything else is a bug in the code driving the machine and raises
   ``LocalProtocolError`` at once.
3. The machine says what to do; the driver does it, in order. Every
   ``Record`` must be persisted before it is shown to anyone, and ``Finish``
   (the node's new state) comes before the final ``Record``, so a client that
   sees the final event and asks for the status sees the new state.
4. Resuming is starting: the machine is built from the persisted step states
   and continues from the first unfinished step, so a restart at any point
   redoes at most the step that was running (steps are idempotent).

The driver (``microstackd.enrolment.runner``) feeds step outcomes in as events and
executes the commands that come out.
"""

from __future__ import annotations

from collections.abc import Mapping
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


class Enrolment:
    """One node's enrolment through ``plan``, resumed from ``states``."""

    def __init__(
        self,
        plan: tuple[str, ...],
        states: Mapping[str, StepState],
        titles: Mapping[str, str] | None = None,
    ) -> None:
        if not plan or plan[-1] != DONE:
            raise LocalProtocolError(f"a plan must end with {DONE!r}: {plan!r}")
        self.plan = plan
        #: Titles of the plan's own steps (a role's), besides ``TITLES``.
        self.titles: Mapping[str, str] = titles or {}
        self.states: dict[str, StepState] = {
            step: states.get(step, StepState.PENDING) for step in plan
        }

    @property
    def current(self) -> str | None:
        """The first unfinished step, or None when the plan is complete."""
        return next((s for s in self.plan if not self.states[s].finished), None)

    @property
    def complete(self) -> bool:
        return self.current is None

    def _move(self, step: str, event: str) -> StepState:
        """Apply ``event`` to the current step ``step``; its new state."""
        if step != self.current:
            raise LocalProtocolError(f"step {step!r} is not the current step {self.current!r}")
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

    def resume(self) -> list[Command]:
        """Where to go from the persisted states (a fresh start included)."""
        step = self.current
        if step is None:
            return [
                Finish(NodeState.ACTIVE),
                Record(DONE, StepState.DONE, "already enrolled", 100, final=True),
            ]
        if self.states[step] in (StepState.RUNNING, StepState.WAITING):
            # Interrupted mid-step (a crash or restart): run it again.
            self._move(step, INTERRUPTED)
        return self._start(step)

    def handle(self, event: Event) -> list[Command]:
        if isinstance(event, StepProgress):
            state = self._move(event.step, WAIT if event.waiting else PROGRESS)
            return [Record(event.step, state, event.message, event.percent)]
        if isinstance(event, StepFailed):
            self._move(event.step, FAILED)
            return [
                Finish(NodeState.FAILED, f"{event.step}: {event.message}"),
                Record(event.step, StepState.FAILED, event.message, final=True),
            ]
        state = self._move(event.step, SKIPPED if event.skipped else SUCCEEDED)
        following = self.current
        if following is None:
            return [
                Finish(NodeState.ACTIVE),
                Record(event.step, state, event.message, 100, final=True),
            ]
        return [Record(event.step, state, event.message, 100), *self._start(following)]
