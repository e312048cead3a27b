"""The enrolment machine, driven in memory: no I/O, no clock."""

from __future__ import annotations

import pytest

from microstackd.enrolment import machine as e
from microstackd.model import NodeState, StepState

PLAN = (e.ADMIT, e.ISSUE_CONFIG, e.DONE)


def test_fresh_start_runs_the_first_step() -> None:
    machine = e.Enrolment(PLAN, {})
    assert machine.resume() == [
        e.Record(e.ADMIT, StepState.RUNNING, e.TITLES[e.ADMIT]),
        e.Run(e.ADMIT),
    ]


def test_success_moves_to_the_next_step_and_finishes_before_the_final_record() -> None:
    machine = e.Enrolment(PLAN, {})
    machine.resume()
    commands = machine.handle(e.StepSucceeded(e.ADMIT, "admitted"))
    assert commands == [
        e.Record(e.ADMIT, StepState.DONE, "admitted", 100),
        e.Record(e.ISSUE_CONFIG, StepState.RUNNING, e.TITLES[e.ISSUE_CONFIG]),
        e.Run(e.ISSUE_CONFIG),
    ]
    machine.handle(e.StepSucceeded(e.ISSUE_CONFIG, "issued", skipped=True))
    last = machine.handle(e.StepSucceeded(e.DONE, "active"))
    assert last == [
        e.Finish(NodeState.ACTIVE),
        e.Record(e.DONE, StepState.DONE, "active", 100, final=True),
    ]
    assert machine.complete
    assert machine.states[e.ISSUE_CONFIG] is StepState.SKIPPED


def test_failure_finishes_failed_with_a_final_record() -> None:
    machine = e.Enrolment(PLAN, {})
    machine.resume()
    commands = machine.handle(e.StepFailed(e.ADMIT, "disk full"))
    assert commands == [
        e.Finish(NodeState.FAILED, "admit: disk full"),
        e.Record(e.ADMIT, StepState.FAILED, "disk full", final=True),
    ]


def test_resume_skips_finished_steps_and_reruns_an_interrupted_one() -> None:
    machine = e.Enrolment(PLAN, {e.ADMIT: StepState.DONE, e.ISSUE_CONFIG: StepState.RUNNING})
    assert machine.resume()[-1] == e.Run(e.ISSUE_CONFIG)


def test_resume_after_failure_retries_only_the_failed_step() -> None:
    machine = e.Enrolment(PLAN, {e.ADMIT: StepState.DONE, e.ISSUE_CONFIG: StepState.FAILED})
    assert machine.resume()[-1] == e.Run(e.ISSUE_CONFIG)


def test_resume_of_a_complete_plan_restates_done() -> None:
    machine = e.Enrolment(PLAN, {s: StepState.DONE for s in PLAN})
    commands = machine.resume()
    assert commands[0] == e.Finish(NodeState.ACTIVE)
    assert isinstance(commands[1], e.Record) and commands[1].final


def test_progress_and_waiting_are_recorded() -> None:
    machine = e.Enrolment(PLAN, {})
    machine.resume()
    assert machine.handle(e.StepProgress(e.ADMIT, "half", 50)) == [
        e.Record(e.ADMIT, StepState.RUNNING, "half", 50)
    ]
    assert machine.handle(e.StepProgress(e.ADMIT, "control busy", waiting=True)) == [
        e.Record(e.ADMIT, StepState.WAITING, "control busy", 0)
    ]
    assert machine.handle(e.StepSucceeded(e.ADMIT, "ok"))[0].state is StepState.DONE  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "event",
    [
        e.StepSucceeded(e.ISSUE_CONFIG, "out of order"),
        e.StepProgress(e.DONE, "not current"),
        e.StepFailed("no-such-step", "x"),
    ],
)
def test_events_for_a_step_that_is_not_current_are_local_errors(event: e.Event) -> None:
    machine = e.Enrolment(PLAN, {})
    machine.resume()
    with pytest.raises(e.LocalProtocolError):
        machine.handle(event)


def test_a_finished_step_cannot_move_again() -> None:
    machine = e.Enrolment((e.ADMIT, e.DONE), {})
    machine.resume()
    machine.handle(e.StepSucceeded(e.ADMIT, "ok"))
    with pytest.raises(e.LocalProtocolError):
        machine.handle(e.StepFailed(e.ADMIT, "late failure"))


def test_a_plan_must_end_with_done() -> None:
    with pytest.raises(e.LocalProtocolError):
        e.Enrolment((e.ADMIT,), {})


def test_every_transition_in_the_table_is_between_known_states() -> None:
    events = {e.START, e.INTERRUPTED, e.PROGRESS, e.WAIT, e.SUCCEEDED, e.SKIPPED, e.FAILED}
    assert set(e.TRANSITIONS) == set(StepState)
    for frm, moves in e.TRANSITIONS.items():
        assert set(moves) <= events, frm
        assert all(to in StepState for to in moves.values())
    assert not e.TRANSITIONS[StepState.DONE] and not e.TRANSITIONS[StepState.SKIPPED]


# ------------------------------------------------ steps run together --

GROUPED = ("a", "b1", "b2", "c1", "c2", "c3", "d", e.DONE)
#: After "a": lane (b1, b2) beside lane (c1, c2, c3); then "d".
LANES = ((("b1", "b2"), ("c1", "c2", "c3")),)


def _runs(commands: list[e.Command]) -> list[str]:
    return [c.step for c in commands if isinstance(c, e.Run)]


def test_a_group_starts_the_first_step_of_every_lane_at_once() -> None:
    machine = e.Enrolment(GROUPED, {}, together=LANES)
    machine.resume()
    commands = machine.handle(e.StepSucceeded("a", "ok"))
    assert commands == [
        e.Record("a", StepState.DONE, "ok", 100),
        e.Record("b1", StepState.RUNNING, "b1"),
        e.Run("b1"),
        e.Record("c1", StepState.RUNNING, "c1"),
        e.Run("c1"),
    ]
    assert machine.running == ("b1", "c1")


def test_a_lane_goes_on_by_itself_and_the_group_ends_when_every_lane_has() -> None:
    machine = e.Enrolment(GROUPED, {}, together=LANES)
    machine.resume()
    machine.handle(e.StepSucceeded("a", "ok"))
    assert _runs(machine.handle(e.StepSucceeded("c1", "ok"))) == ["c2"]
    assert _runs(machine.handle(e.StepSucceeded("b1", "ok"))) == ["b2"]
    assert _runs(machine.handle(e.StepSucceeded("b2", "ok"))) == []  # its lane is over
    assert _runs(machine.handle(e.StepSucceeded("c2", "ok"))) == ["c3"]
    assert _runs(machine.handle(e.StepSucceeded("c3", "ok"))) == ["d"]  # after the group
    with pytest.raises(e.LocalProtocolError):
        machine.handle(e.StepSucceeded("b1", "again"))


def test_each_step_of_a_group_reports_its_own_progress() -> None:
    machine = e.Enrolment(GROUPED, {}, together=LANES)
    machine.resume()
    machine.handle(e.StepSucceeded("a", "ok"))
    assert machine.handle(e.StepProgress("c1", "half", 50)) == [
        e.Record("c1", StepState.RUNNING, "half", 50)
    ]
    assert machine.handle(e.StepProgress("b1", "waiting", waiting=True)) == [
        e.Record("b1", StepState.WAITING, "waiting")
    ]
    # A step not under way cannot report.
    with pytest.raises(e.LocalProtocolError):
        machine.handle(e.StepProgress("c2", "too early"))


def test_a_failure_in_a_group_lets_the_others_finish_then_fails_the_plan_naming_it() -> None:
    machine = e.Enrolment(GROUPED, {}, together=LANES)
    machine.resume()
    machine.handle(e.StepSucceeded("a", "ok"))
    # b1 fails while c1 runs: it is recorded failed at once, nothing final yet.
    assert machine.handle(e.StepFailed("b1", "exited 1; see setup-b1.log")) == [
        e.Record("b1", StepState.FAILED, "exited 1; see setup-b1.log")
    ]
    # c1 finishes, but its lane does not go on: nothing starts after a failure.
    assert machine.handle(e.StepSucceeded("c1", "ok")) == [
        e.Record("c1", StepState.DONE, "ok", 100),
        e.Finish(NodeState.FAILED, "b1: exited 1; see setup-b1.log"),
        e.Record("b1", StepState.FAILED, "exited 1; see setup-b1.log", final=True),
    ]
    assert machine.states["c2"] is StepState.PENDING


def test_two_failures_in_a_group_are_both_named() -> None:
    machine = e.Enrolment(GROUPED, {}, together=LANES)
    machine.resume()
    machine.handle(e.StepSucceeded("a", "ok"))
    machine.handle(e.StepFailed("c1", "boom"))
    last = machine.handle(e.StepFailed("b1", "bang"))
    assert last == [
        e.Finish(NodeState.FAILED, "c1: boom (and b1: bang)"),
        e.Record("c1", StepState.FAILED, "boom", final=True),
    ]


def test_resume_inside_a_group_redoes_only_the_unfinished_steps_of_each_lane() -> None:
    states = {
        "a": StepState.DONE,
        "b1": StepState.DONE,
        "b2": StepState.RUNNING,  # interrupted
        "c1": StepState.DONE,
        "c2": StepState.DONE,
        "c3": StepState.FAILED,
    }
    machine = e.Enrolment(GROUPED, states, together=LANES)
    assert machine.resume() == [
        e.Record("b2", StepState.RUNNING, "b2"),
        e.Run("b2"),
        e.Record("c3", StepState.RUNNING, "c3"),
        e.Run("c3"),
    ]
    # A lane that is over is not redone.
    machine = e.Enrolment(GROUPED, {**states, "c3": StepState.DONE}, together=LANES)
    assert _runs(machine.resume()) == ["b2"]


def test_a_group_must_be_consecutive_steps_of_the_plan() -> None:
    with pytest.raises(e.LocalProtocolError, match="consecutive"):
        e.Enrolment(GROUPED, {}, together=((("b1",), ("c2",)),))
    with pytest.raises(e.LocalProtocolError, match="not in the plan"):
        e.Enrolment(GROUPED, {}, together=((("b1",), ("x",)),))
    with pytest.raises(e.LocalProtocolError, match="more than one group"):
        e.Enrolment(GROUPED, {}, together=((("b1", "b2"),), (("b2", "c1"),)))
