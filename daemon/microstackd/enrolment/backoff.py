"""Capped exponential back-off: the one way this daemon waits between
attempts at something that is not there yet (a control node, a node's agent,
a crashed service).

    backoff = Backoff()
    while True:
        try:
            return await attempt()
        except Unreachable:
            backoff.failed()
        await backoff.wait()      # 1 s, 2 s, 4 s, ... up to the cap
"""

from __future__ import annotations

import asyncio

#: Longest wait between two attempts to reach another node, seconds.
MAX_RETRY_DELAY = 10.0


class Backoff:
    def __init__(self, first: float = 1.0, cap: float = MAX_RETRY_DELAY) -> None:
        if not 0 < first <= cap:
            raise ValueError(f"back-off needs 0 < first <= cap, not {first} and {cap}")
        self.first = first
        self.cap = cap
        #: Failed attempts since the last reset.
        self.attempts = 0
        self._delay = first

    @property
    def delay(self) -> float:
        """How long the next ``wait`` sleeps."""
        return self._delay

    def failed(self) -> int:
        """Count a failed attempt; return how many there were since the last reset."""
        self.attempts += 1
        return self.attempts

    def reset(self) -> None:
        """The thing answered: the next wait is the first one again."""
        self.attempts = 0
        self._delay = self.first

    def advance(self) -> float:
        """The current delay, doubled for next time (up to the cap): for a
        caller that schedules its next attempt rather than sleeping until it
        (the service watch looks at its clock every few seconds)."""
        delay = self._delay
        self._delay = min(delay * 2, self.cap)
        return delay

    async def wait(self) -> None:
        """Sleep the current delay, then double it (up to the cap)."""
        await asyncio.sleep(self.advance())
