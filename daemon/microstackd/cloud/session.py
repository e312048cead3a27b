"""One cloud operation's session: its connection (each call in a worker
thread), where its progress goes, the way it waits for Nova, and how it fails."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from microstackd import errors
from microstackd.cloud import CloudRef, Note, Progress
from microstackd.cloud.connection import Connections
from microstackd.model import StepState

T = TypeVar("T")

#: How often a wait polls the cloud, seconds.
POLL = 2.0
#: A wait repeats an unchanged state at most this often, seconds.
REPEAT = 10.0


class Failure(errors.CloudError):
    """A cloud operation failed; ``kind`` says how (timeout, quota, keypair, ...)."""

    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.kind = kind


class Session:
    """One operation on one cloud: its calls, each in a worker thread, and its progress."""

    def __init__(
        self, connections: Connections, ref: CloudRef, progress: Progress | None = None
    ) -> None:
        self._connections = connections
        self.ref = ref
        self._progress = progress

    async def __call__(self, fn: Callable[[Any], T]) -> T:
        return await self._connections.call(self.ref, fn)

    async def progress(self, message: str, waiting: bool = False) -> None:
        await self.note(Note(message, StepState.WAITING if waiting else StepState.RUNNING))

    async def note(self, note: Note) -> None:
        if self._progress is not None:
            await self._progress(note)


def sdk_error() -> tuple[type[Exception], ...]:
    """What a failed OpenStack call raises: openstacksdk's errors, and
    keystoneauth's (an API that refuses connections or times out raises
    ``keystoneauth1.exceptions.ConnectFailure``, which openstacksdk lets
    through: a nova-api restarting made ``status`` an internal error)."""
    from keystoneauth1 import exceptions as auth  # loaded with openstacksdk

    from openstack import exceptions  # loaded already: a Session made a connection

    return exceptions.SDKException, auth.ClientException


async def wait(
    s: Session,
    what: str,
    check: Callable[[], Awaitable[tuple[bool, str]]],
    timeout: float,
    host: str,
    poll: float | None = None,
) -> str:
    """Poll ``check`` (done?, state seen) every ``poll`` seconds (``POLL``)
    until done; stream what it waits for and for how long; on time-out name
    the host and the last state."""
    started = time.monotonic()
    shown, shown_at = "", 0.0
    while True:
        try:
            done, state = await check()
        except sdk_error() as exc:
            done, state = False, f"cloud error: {exc}"
        now = time.monotonic()
        if done:
            await s.progress(f"{what}: {state} after {now - started:.0f} s")
            return state
        if now - started > timeout:
            raise Failure(
                f"{host}: timed out after {timeout:.0f} s waiting for {what}; "
                f"last state seen: {state}",
                "timeout",
            )
        if state != shown or now - shown_at >= REPEAT:
            await s.progress(
                f"waiting for {what} ({now - started:.0f} s so far; {state})", waiting=True
            )
            shown, shown_at = state, now
        await asyncio.sleep(POLL if poll is None else poll)
