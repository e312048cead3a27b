"""The one back-off: doubling waits up to a cap, counted attempts, a reset."""

from __future__ import annotations

import asyncio

import pytest

from microstackd.enrolment.backoff import MAX_RETRY_DELAY, Backoff


def test_waits_double_up_to_the_cap_and_reset_starts_over(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("microstackd.enrolment.backoff.asyncio.sleep", sleep)
    b = Backoff()

    async def five() -> None:
        for _ in range(5):
            b.failed()
            await b.wait()

    asyncio.run(five())
    assert slept == [1.0, 2.0, 4.0, 8.0, MAX_RETRY_DELAY]
    assert b.attempts == 5 and b.delay == MAX_RETRY_DELAY
    b.reset()
    assert (b.attempts, b.delay) == (0, 1.0)


def test_advance_is_wait_without_the_sleep() -> None:
    """The service watch schedules its attempts against its own clock."""
    b = Backoff(5.0, 40.0)
    assert [b.advance() for _ in range(5)] == [5.0, 10.0, 20.0, 40.0, 40.0]
    b.reset()
    assert b.advance() == 5.0


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        Backoff(first=0)
    with pytest.raises(ValueError):
        Backoff(first=5, cap=1)
