"""The heartbeats an enrolled member sends its control (with its services'
states), at the interval the control asks for, and at once when its
services changed (``beat_now``: the wiring connects the agent's ``changed``
Signal to it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from microstackd import errors
from microstackd.model import (
    MAX_SERVICE_MESSAGE,
    MAX_SERVICE_NAME,
    MAX_SERVICES,
    MAX_SERVICES_TEXT,
    NodeCredentials,
    Role,
    ServiceRecord,
    clip,
)
from microstackd.peers.cluster import ControlClient
from microstackd.store import Store

log = logging.getLogger(__name__)

#: meta key holding the last enrolment state this node saw from its control.
ENROLMENT_META = "enrolment"

ServicesProvider = Callable[[], Awaitable[list[ServiceRecord]]]


def bounded(services: list[ServiceRecord]) -> list[ServiceRecord]:
    """This node's services clipped to what the control accepts (model.MAX_*):
    the first MAX_SERVICES, each message cut to its share of the total."""
    services = services[:MAX_SERVICES]
    share = min(MAX_SERVICE_MESSAGE, MAX_SERVICES_TEXT // max(1, len(services)))
    return [
        ServiceRecord(
            s.name[:MAX_SERVICE_NAME],
            s.state,
            clip(s.message, share),
        )
        for s in services
    ]


class Heartbeats:
    def __init__(self, store: Store, services: ServicesProvider) -> None:
        self._store = store
        #: This node's services as its agent reports them.
        self._services = services
        self._task: asyncio.Task[None] | None = None
        #: Set to send the next heartbeat now rather than at its interval.
        self._beat_now = asyncio.Event()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._beat())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def beat_now(self) -> None:
        """Send the next heartbeat at once: this node's services changed."""
        self._beat_now.set()

    def resume(self) -> None:
        """At start-up: an enrolled member goes on sending heartbeats."""
        cluster = self._store.cluster()
        if cluster is not None and cluster.role is Role.COMPUTE:
            if self._store.get_meta(ENROLMENT_META) == "active":
                self.start()

    async def _beat(self) -> None:
        interval = 10
        stream = True  # until the control says it serves no heartbeat stream
        while True:
            cluster = self._store.cluster()
            if cluster is None:
                return
            credentials = self._store.credentials()
            client = ControlClient(cluster, credentials)
            try:
                if stream:
                    # It returns for new credentials (a new stream with them) or
                    # for a control that serves none (a call instead): at once.
                    interval, stream = await self._stream(client, credentials, interval)
                    continue
                else:
                    self._beat_now.clear()  # a change from here on is in this beat or the next
                    services = bounded(await self._services())
                    interval = await client.heartbeat(services) or interval
            except errors.PermissionDenied as exc:
                log.warning("heartbeat refused: this node was removed? reason=%r", exc.message)
                return
            except errors.MicrostackError as exc:
                log.info("heartbeat failed reason=%r", exc.message)
            finally:
                await client.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._beat_now.wait()

    async def _stream(
        self, client: ControlClient, credentials: NodeCredentials, interval: int
    ) -> tuple[int, bool]:
        """Beat on one stream until it ends (raising what ended it) or this
        node's credentials change; return (the interval, whether to go on
        with a stream: False when the control serves none)."""
        beats = client.heartbeats()
        try:
            while True:
                self._beat_now.clear()  # a change from here on is in this beat or the next
                await beats.beat(bounded(await self._services()))
                if not beats.answered.is_set():  # the control answers the first beat
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(10):
                            await beats.answered.wait()
                interval = beats.interval or interval
                if not beats.ended.done():
                    now: asyncio.Future[bool] = asyncio.ensure_future(self._beat_now.wait())
                    await asyncio.wait(
                        (now, beats.ended), timeout=interval, return_when=asyncio.FIRST_COMPLETED
                    )
                    now.cancel()
                if beats.ended.done():
                    if beats.unimplemented:
                        log.info("the control takes no heartbeat stream: one call per beat")
                        return interval, False
                    raise beats.ended.result()
                if self._store.credentials() != credentials:
                    return interval, True
        finally:
            await beats.close()
