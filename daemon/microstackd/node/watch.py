"""Watching a role's services once they run.

Before this, nothing looked at a compute's services after its enrolment but
the heartbeat's report: a service stopped by hand (``systemctl stop``), or
one systemd gave up on (its start limit hit), stayed down and was shown as
such at best every heartbeat. A ``ServiceWatch`` looks every
``WATCH_INTERVAL`` seconds (the owner runs the loop):

* a change of any service's state is reported at once (``on_change``: on a
  compute the agent's ``changed`` Signal, which the wiring answers with a
  heartbeat now), so the control's ``status`` shows it within seconds;
* a service found not running (``stopped`` or ``failed``) is started again at
  the next look — after the control was told, so an operator sees that it
  happened — and, while starting it fails, again after doubling delays up to
  ``BACKOFF_CAP`` (the one ``enrolment.backoff.Backoff``, scheduled against
  the watch's clock rather than slept); what the watch will do is in the
  status message;
* without ``restore`` (the process manager, which restarts its own
  children) it only reports.

The control watches a node's services the same way while it waits on
something they must bring about (``unless_a_service_fails``): admission to
Nova waits minutes for the host's nova-compute, and one that crash-loops
(its virt driver missing, libvirt down) never shows up there. The first
service the node's agent reports ``failed`` ends the wait with that
service's own words (exit status, last log lines), instead of a time-out
that never says why.

Pure of I/O itself: the states come from, and restores go through, the
callables it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import NoReturn, TypeVar

from microstackd import errors
from microstackd.enrolment.backoff import Backoff
from microstackd.model import ServiceRecord
from microstackd.node.services.spec import FAILED, RUNNING, STOPPED

log = logging.getLogger(__name__)

#: Seconds between two looks at the services.
WATCH_INTERVAL = 5.0
#: Longest wait between two attempts to start a service that keeps failing.
BACKOFF_CAP = 300.0
DOWN = (STOPPED, FAILED)

Statuses = Callable[[], Awaitable[list[ServiceRecord]]]
Restore = Callable[[str], Awaitable[object]]
OnChange = Callable[[], Awaitable[None]]
T = TypeVar("T")


async def _nobody() -> None:
    """No one to tell (the control plane writes what ``tick`` returns itself)."""


@dataclass
class _Down:
    #: The delays between attempts; its ``attempts`` are the failed ones.
    backoff: Backoff
    #: When (clock) the watch starts it again.
    next_try: float = 0.0
    #: At that wall-clock time, for the operator.
    next_try_wall: float = 0.0
    #: Why the last attempt failed (its first line).
    last_error: str = ""


def _hhmmss(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%H:%M:%S UTC")


class ServiceWatch:
    def __init__(
        self,
        statuses: Statuses,
        restore: Restore | None,
        on_change: OnChange = _nobody,
        *,
        interval: float = WATCH_INTERVAL,
        backoff_cap: float = BACKOFF_CAP,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._statuses = statuses
        self._restore = restore
        self._on_change = on_change
        self.interval = interval
        self._backoff_cap = backoff_cap
        self._clock = clock
        self._wall = wall_clock
        self._down: dict[str, _Down] = {}
        #: Services the watch started again, and the note shown while they run.
        self._restored: dict[str, str] = {}
        self._last: list[ServiceRecord] | None = None

    def describe(self, statuses: list[ServiceRecord]) -> list[ServiceRecord]:
        """``statuses`` with what the watch does about them in their messages."""
        described = []
        for status in statuses:
            down = self._down.get(status.name)
            if status.state in DOWN and down is not None and self._restore is not None:
                note = f"microstackd starts it again at {_hhmmss(down.next_try_wall)}"
                if down.backoff.attempts:
                    attempt = down.backoff.attempts + 1
                    note += f" (attempt {attempt}; the last failed: {down.last_error})"
                head = status.message or (
                    f"{status.name} was stopped, not by microstackd"
                    if status.state == STOPPED
                    else f"{status.name} failed"
                )
                status = replace(status, message=f"{head}; {note}")
            elif status.state == RUNNING and status.name in self._restored:
                status = replace(status, message=self._restored[status.name])
            described.append(status)
        return described

    async def tick(self) -> list[ServiceRecord]:
        """One look: report changes, start again what was found down before."""
        current = await self._statuses()
        restored = False
        for status in current:
            if status.state not in DOWN:
                self._down.pop(status.name, None)
                continue
            self._restored.pop(status.name, None)
            down = self._down.get(status.name)
            if down is None:
                down = self._down[status.name] = _Down(Backoff(self.interval, self._backoff_cap))
                self._schedule(down)
                log.warning(
                    "service not running service=%s state=%s action=%s",
                    status.name,
                    status.state,
                    f"start-again-in-{self.interval:g}s" if self._restore else "report",
                )
                continue
            if self._restore is None or self._clock() < down.next_try:
                continue
            restored = True
            await self._start_again(status, down)
        if restored:
            current = await self._statuses()
        described = self.describe(current)
        if described != self._last:
            self._last = described
            await self._on_change()
        return described

    def _schedule(self, down: _Down) -> None:
        """The next attempt: one interval after the service was found down,
        then twice as long after each failed one, up to the cap."""
        delay = down.backoff.advance()
        down.next_try, down.next_try_wall = self._clock() + delay, self._wall() + delay

    async def _start_again(self, status: ServiceRecord, down: _Down) -> None:
        assert self._restore is not None
        try:
            await self._restore(status.name)
        except errors.MicrostackError as exc:
            down.backoff.failed()
            down.last_error = exc.message.splitlines()[0] if exc.message else "no reason given"
            self._schedule(down)
            log.warning(
                "cannot start service again service=%s attempt=%d retry_in=%.0fs error=%r",
                status.name,
                down.backoff.attempts,
                down.next_try - self._clock(),
                exc.message,
            )
            return
        del self._down[status.name]
        self._restored[status.name] = (
            f"started again by microstackd at {_hhmmss(self._wall())} "
            f"after it was found {status.state}"
        )
        log.info("service started again service=%s was=%s", status.name, status.state)


async def fail_when_a_service_fails(
    statuses: Statuses, node: str, what: str, interval: float = WATCH_INTERVAL
) -> NoReturn:
    """Look at ``statuses`` until a service is failed, then raise
    ``errors.ServiceFailed`` naming it. A node that cannot be asked is asked
    again at the next look (the wait it watches has its own time-out)."""
    while True:
        try:
            failed = next((s for s in await statuses() if s.state == FAILED), None)
        except errors.NodeUnreachable:
            failed = None
        if failed is not None:
            raise errors.ServiceFailed(
                f"{failed.name} on {node} failed while {what}: {failed.message or failed.state}"
            )
        await asyncio.sleep(interval)


async def unless_a_service_fails(
    wait: Awaitable[T], statuses: Statuses, node: str, what: str, interval: float = WATCH_INTERVAL
) -> T:
    """``wait``'s result, unless one of the node's services fails first."""
    main = asyncio.ensure_future(wait)
    watch = asyncio.ensure_future(fail_when_a_service_fails(statuses, node, what, interval))
    try:
        await asyncio.wait({main, watch}, return_when=asyncio.FIRST_COMPLETED)
        if watch.done():
            watch.result()  # raises
        return main.result()
    finally:
        for task in (main, watch):
            task.cancel()
        for task in (main, watch):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
