"""The heartbeats an enrolled member sends its control (with its services'
states), at the interval the control asks for, and at once when its
services changed (``beat_now``: the wiring connects the agent's ``changed``
Signal to it).

A member beats by datagram (``trust.beat``) where it can: a ``Heartbeat``
call carries its services and version and brings a session key, then one
UDP datagram per interval, each acknowledged, says it is alive. A change of
services, a renewed certificate, a key near its end or beats no longer
acknowledged (the control restarted) make a new call, and so a new key.
Where datagrams do not get through (the first beat of a session is never
acknowledged, or the control offers none) it beats on one
``ClusterService.Heartbeats`` stream for ``DATAGRAM_RETRY`` seconds, then
tries datagrams again; against a control with neither, one call per beat."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import time
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
from microstackd.peers.beats import BeatSender, DatagramSession
from microstackd.peers.cluster import ControlClient
from microstackd.store import Store

log = logging.getLogger(__name__)

#: meta key holding the last enrolment state this node saw from its control.
ENROLMENT_META = "enrolment"

ServicesProvider = Callable[[], Awaitable[list[ServiceRecord]]]

#: Seconds a heartbeat datagram waits for its acknowledgement (then it is
#: sent once more before the beats count as lost).
ACK_TIMEOUT = 1.0
#: Seconds on the stream after datagrams did not get through, before trying again.
DATAGRAM_RETRY = 600.0
#: A session's key is replaced once this share of its lifetime is over.
KEY_REFRESH = 0.9


class Ended(enum.Enum):
    """Why a datagram session ended (then a new call is made)."""

    CHANGED = "the services changed"
    RENEWED = "a new certificate"
    KEY_OLD = "the key is near its end"
    LOST = "beats no longer acknowledged"
    BLOCKED = "no beat acknowledged"


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
        datagrams_after = 0.0  # (monotonic) when to try datagrams again
        while True:
            cluster = self._store.cluster()
            if cluster is None:
                return
            credentials = self._store.credentials()
            client = ControlClient(cluster, credentials)
            try:
                if time.monotonic() >= datagrams_after:
                    self._beat_now.clear()  # a change from here on is in this call or the next
                    services = bounded(await self._services())
                    told, session = await client.heartbeat_session(services, self._software)
                    interval = told or interval
                    # No connection is held while beating by datagram: an idle
                    # mTLS channel's keepalives alone would cost the control
                    # more than the beats (docs/performance.md).
                    await client.close()
                    ended = Ended.BLOCKED
                    if session is not None:
                        ended = await self._datagrams(
                            cluster.control_address, session, credentials, interval
                        )
                    if ended is Ended.BLOCKED:
                        # Offered none: the control's choice (or an older one).
                        # Offered but unanswered: something on the way drops UDP.
                        (log.info if session is None else log.warning)(
                            "heartbeat datagrams to %s: %s; beating on a stream for %d s",
                            cluster.control_address,
                            "none offered" if session is None else "no beat acknowledged",
                            DATAGRAM_RETRY,
                        )
                        datagrams_after = time.monotonic() + DATAGRAM_RETRY
                    else:
                        log.debug("heartbeat datagram session ended: %s", ended.value)
                    continue  # a new call (or the stream) at once
                if stream:
                    # It returns for new credentials (a new stream with them), for
                    # a control that serves none (a call instead), or when it is
                    # time to try datagrams again: at once.
                    interval, stream = await self._stream(
                        client, credentials, interval, datagrams_after
                    )
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
            await self._pause(interval)

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; True when this node's services changed meanwhile."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._beat_now.wait()
                return True
        return False

    async def _datagrams(
        self, host: str, session: DatagramSession, credentials: NodeCredentials, interval: int
    ) -> Ended:
        """Beat by datagram in ``session`` (the call that opened it was this
        interval's beat) until a new call is due; say why."""
        try:
            sender = await BeatSender.open(host, session)
        except OSError as exc:
            log.info("heartbeat datagrams: no UDP socket to %s (%s)", host, exc)
            return Ended.BLOCKED
        refresh = time.monotonic() + session.seconds * KEY_REFRESH
        acknowledged = False
        try:
            while True:
                # The first beat goes at once: whether datagrams get through
                # is known now, not an interval later.
                told = await sender.beat(ACK_TIMEOUT) or await sender.beat(ACK_TIMEOUT)
                if told is None:
                    return Ended.LOST if acknowledged else Ended.BLOCKED
                acknowledged = True
                interval = told
                if await self._pause(interval):
                    return Ended.CHANGED
                if self._store.credentials() != credentials:
                    return Ended.RENEWED
                if time.monotonic() >= refresh:
                    return Ended.KEY_OLD
        finally:
            sender.close()

    async def _stream(
        self, client: ControlClient, credentials: NodeCredentials, interval: int, until: float
    ) -> tuple[int, bool]:
        """Beat on one stream until it ends (raising what ended it), this
        node's credentials change or (monotonic) ``until``; return (the
        interval, whether to go on with a stream: False when the control
        serves none)."""
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
                if self._store.credentials() != credentials or time.monotonic() >= until:
                    return interval, True
        finally:
            await beats.close()
