"""The control's admission of bootstraps (control/bootstrap.py, ``Admission``):
at most ``limit`` at once; past that, turns spaced by the control's capacity
(``limit`` places, each held as long as a bootstrap takes lately), after every
turn already given."""

from __future__ import annotations

import pytest

from microstackd.control.bootstrap import Admission


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_past_the_limit_newcomers_get_turns_one_place_apart() -> None:
    clock = Clock()
    admission = Admission(2, clock)
    assert admission.enter() == 0 and admission.enter() == 0
    # No bootstrap seen yet: each is assumed to take FIRST_DURATION.
    step = Admission.FIRST_DURATION / 2
    assert [admission.enter() for _ in range(3)] == pytest.approx([step, 2 * step, 3 * step])
    assert admission.in_progress == 2  # the refused are not counted
    admission.leave(clock(), completed=True)
    assert admission.enter() == 0  # room again: admitted at once


def test_turns_follow_how_long_bootstraps_take() -> None:
    clock = Clock()
    admission = Admission(10, clock)
    for _ in range(200):  # each takes 0.5 s: capacity 10 / 0.5 = 20 a second
        assert admission.enter() == 0
        started = admission.started()
        clock.now += 0.5
        admission.leave(started, completed=True)
    assert admission.rate() == pytest.approx(20, rel=0.01)
    for _ in range(10):
        assert admission.enter() == 0
    turns = [admission.enter() for _ in range(3)]
    assert turns == pytest.approx([0.05, 0.10, 0.15], rel=0.02)
    clock.now += 0.125  # time passes: later newcomers queue behind the turns given
    assert admission.enter() == pytest.approx(0.075, rel=0.05)


def test_failed_bootstraps_free_their_place_but_do_not_count_as_taking_long() -> None:
    clock = Clock()
    admission = Admission(1, clock)
    assert admission.enter() == 0
    started = admission.started()
    clock.now += 30  # a joiner that never answered
    admission.leave(started, completed=False)
    assert admission.in_progress == 0
    assert admission.rate() == 1 / Admission.FIRST_DURATION


def test_an_exchange_whose_response_is_long_in_coming_gives_its_place_up() -> None:
    """A stranger's silent exchanges cannot hold the control's places for
    longer than STALLED_AFTER; an answered one holds its place to the end."""
    import asyncio

    from microstackd.control import bootstrap
    from microstackd.control.bootstrap import Bootstrap, BootstrapSession

    async def main() -> tuple[int, int, int]:
        admitted = Bootstrap.__new__(Bootstrap)
        admitted._admission = Admission(2)
        sessions = []
        for _ in range(2):
            assert admitted._admission.enter() == 0
            session = BootstrapSession.__new__(BootstrapSession)
            session.started, session.completed = 0.0, False
            session.stall = asyncio.get_running_loop().call_later(
                0.05, admitted._release, session, False
            )
            sessions.append(session)
        answered = sessions[0].stall
        assert answered is not None
        answered.cancel()  # answered: its place is kept
        await asyncio.sleep(0.1)
        held = admitted._admission.in_progress
        admitted.end(sessions[0])
        admitted.end(sessions[1])  # given up already: not counted twice
        return held, admitted._admission.in_progress, int(bootstrap.STALLED_AFTER)

    held, after, stalled_after = asyncio.run(main())
    assert (held, after) == (1, 0)
    assert stalled_after == 5
