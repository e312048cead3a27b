"""The heartbeats an enrolled member sends its control (with its services'
states), at the interval the control asks for, and at once when its
services changed (``beat_now``: the wiring connects the agent's ``changed``
Signal to it)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from microstackd import errors
from microstackd.member.background import Background
from microstackd.model import (
    MAX_SERVICE_MESSAGE,
    MAX_SERVICE_NAME,
    MAX_SERVICES,
    MAX_SERVICES_TEXT,
    NodeCredentials,
    Role,
    ServiceRecord,
    Software,
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
    the first MAX_SERVICES, each message and detail cut to its share of the
    total; every other field as it is."""
    services = services[:MAX_SERVICES]
    # A message and a detail per service share the total.
    share = min(MAX_SERVICE_MESSAGE, MAX_SERVICES_TEXT // max(1, 2 * len(services)))
    return [
        dataclasses.replace(
            s,
            name=s.name[:MAX_SERVICE_NAME],
            message=clip(s.message, share),
            detail=clip(s.detail, share),
        )
        for s in services
    ]


class Heartbeats:
    def __init__(self, store: Store, services: ServicesProvider, software: Software) -> None:
        self._store = store
        #: What this node declares it runs, in every heartbeat.
        self._software = software
        #: This node's services as its agent reports them.
        self._services = services
        self._loop = Background(self._beat)
        #: Set to send the next heartbeat now rather than at its interval.
        self._beat_now = asyncio.Event()

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

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
                self._beat_now.clear()  # a change from here on is in this beat or the next
                services = bounded(await self._services())
                interval = await client.heartbeat(services, self._software) or interval
            except errors.PermissionDenied as exc:
                if self._store.credentials() != credentials:
                    # A stream under the certificate this node just renewed: its
                    # first call with the new one revoked the old. A new stream.
                    log.info("heartbeat stream under the old certificate ended: a new one")
                    continue
                log.warning("heartbeat refused: this node was removed? reason=%r", exc.message)
                return
            except errors.VersionSkew as exc:
                # Keep beating: once one side is upgraded the control takes it again.
                log.warning("heartbeat refused: version outside the window reason=%r", exc.message)
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
        beats = client.heartbeats(self._software)
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
