"""The enrolment machine, driven in memory: no I/O, no clock."""

from __future__ import annotations

import pytest

from microstackd.enrolment import machine as e
from microstackd.model import NodeState, StepState

PLAN = (e.ADMIT, e.ISSUE_CONFIG, e.DONE)


def test_fresh_start_runs_the_first_step():
    machine = e.Enrolment(PLAN, {})
    assert machine.resume() == [
        e.Record(e.ADMIT, StepState.RUNNING, e.TITLES[e.ADMIT]),
        e.Run(e.ADMIT),
    ]


def test_success_moves_to_the_next_step_and_finishes_before_the_final_record():
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


def test_failure_finishes_failed_with_a_final_record():
    machine = e.Enrolment(PLAN, {})
    machine.resume()
    commands = machine.handle(e.StepFailed(e.ADMIT, "disk full"))
    assert commands == [
        e.Finish(NodeState.FAILED, "admit: disk full"),
        e.Record(e.ADMIT, StepState.FAILED, "disk full", final=True),
    ]


def test_resume_skips_finished_steps_and_reruns_an_interrupted_one():
    machine = e.Enrolment(PLAN, {e.ADMIT: StepState.DONE, e.ISSUE_CONFIG: StepState.RUNNING})
    assert machine.resume()[-1] == e.Run(e.ISSUE_CONFIG)


def test_resume_after_failure_retries_only_the_failed_step():
    machine = e.Enrolment(PLAN, {e.ADMIT: StepState.DONE, e.ISSUE_CONFIG: StepState.FAILED})
    assert machine.resume()[-1] == e.Run(e.ISSUE_CONFIG)


def test_resume_of_a_complete_plan_restates_done():
    machine = e.Enrolment(PLAN, {s: StepState.DONE for s in PLAN})
    commands = machine.resume()
    assert commands[0] == e.Finish(NodeState.ACTIVE)
    assert isinstance(commands[1], e.Record) and commands[1].final


def test_progress_and_waiting_are_recorded():
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
def test_events_for_a_step_that_is_not_current_are_local_errors(event):
    machine = e.Enrolment(PLAN, {})
    machine.resume()
    with pytest.raises(e.LocalProtocolError):
        machine.handle(event)


def test_a_finished_step_cannot_move_again():
    machine = e.Enrolment((e.ADMIT, e.DONE), {})
    machine.resume()
    machine.handle(e.StepSucceeded(e.ADMIT, "ok"))
    with pytest.raises(e.LocalProtocolError):
        machine.handle(e.StepFailed(e.ADMIT, "late failure"))


def test_a_plan_must_end_with_done():
    with pytest.raises(e.LocalProtocolError):
        e.Enrolment((e.ADMIT,), {})


def test_every_transition_in_the_table_is_between_known_states():
    events = {e.START, e.INTERRUPTED, e.PROGRESS, e.WAIT, e.SUCCEEDED, e.SKIPPED, e.FAILED}
    assert set(e.TRANSITIONS) == set(StepState)
    for frm, moves in e.TRANSITIONS.items():
        assert set(moves) <= events, frm
        assert all(to in StepState for to in moves.values())
    assert not e.TRANSITIONS[StepState.DONE] and not e.TRANSITIONS[StepState.SKIPPED]
