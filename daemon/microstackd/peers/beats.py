"""A member's heartbeat datagrams to its control (``trust.beat``): one UDP
socket per session, a beat sent and its acknowledgement awaited."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from typing import cast

from microstackd.trust import beat


@dataclass(frozen=True)
class DatagramSession:
    """What the control handed this member in a ``Heartbeat`` answer."""

    key_id: int
    key: bytes
    #: The UDP port on the control's address that takes the beats.
    port: int
    #: Seconds the key is good for, from when it was handed over.
    seconds: float


class BeatSender(asyncio.DatagramProtocol):
    """Beats of one session to ``host``:``session.port``. ``beat`` sends the
    next and waits for its acknowledgement; anything else that arrives (a
    late acknowledgement, a forgery, an ICMP error) is ignored."""

    def __init__(self, session: DatagramSession) -> None:
        self.session = session
        self._counter = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._waiting: tuple[int, asyncio.Future[int]] | None = None

    @classmethod
    async def open(cls, host: str, session: DatagramSession) -> BeatSender:
        """A sender connected to the control (OSError: no route, a bad address)."""
        sender = cls(session)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: sender, remote_addr=(host, session.port), family=family
        )
        return sender

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if self._waiting is None:
            return
        counter, future = self._waiting
        acked = beat.open_ack(data, self.session.key_id, self.session.key)
        if acked is not None and acked[0] == counter and not future.done():
            future.set_result(acked[1])

    def error_received(self, exc: Exception) -> None:
        pass  # the port is closed (the control is down): the beat goes unanswered

    async def beat(self, timeout: float) -> int | None:
        """Send one beat; the interval the control asks for once it
        acknowledged it, or None: no acknowledgement within ``timeout`` s."""
        if self._transport is None:
            return None
        self._counter += 1
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting = (self._counter, future)
        try:
            self._transport.sendto(
                beat.seal_beat(self.session.key_id, self.session.key, self._counter)
            )
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return None
        finally:
            self._waiting = None

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
