"""The heartbeats an enrolled member sends its control (with its services'
states), at the interval the control asks for."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from microstackd import errors
from microstackd.model import Role, ServiceRecord
from microstackd.peers.cluster import ControlClient
from microstackd.store import Store

log = logging.getLogger(__name__)

#: meta key holding the last enrolment state this node saw from its control.
ENROLMENT_META = "enrolment"

ServicesProvider = Callable[[], Awaitable[list[ServiceRecord]]]


class Heartbeats:
    def __init__(self, store: Store, services: ServicesProvider) -> None:
        self._store = store
        #: This node's services as its agent reports them.
        self._services = services
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._beat())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def resume(self) -> None:
        """At start-up: an enrolled member goes on sending heartbeats."""
        cluster = self._store.cluster()
        if cluster is not None and cluster.role is Role.COMPUTE:
            if self._store.get_meta(ENROLMENT_META) == "active":
                self.start()

    async def _beat(self) -> None:
        interval = 10
        while True:
            cluster = self._store.cluster()
            if cluster is None:
                return
            client = ControlClient(cluster, self._store.credentials())
            try:
                interval = await client.heartbeat(await self._services()) or interval
            except errors.PermissionDenied as exc:
                log.warning("heartbeat refused: this node was removed? reason=%r", exc.message)
                return
            except errors.MicrostackError as exc:
                log.info("heartbeat failed reason=%r", exc.message)
            finally:
                await client.close()
            await asyncio.sleep(interval)
