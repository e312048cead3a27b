"""The control's heartbeat datagrams (``trust.beat``): a key for each member
that asks in its ``Heartbeat`` call, and a UDP endpoint on the cluster port
that takes its beats. A beat costs the control one datagram in, a MAC and a
dictionary or two, and one datagram out; no TLS record, no call, no task.
At 10,000 members beating every 10 s that is what keeps heartbeats within
a tenth of a core (docs/performance.md, "heartbeat datagrams").

What a beat may do is no more than what a beat on the stream may: say that
the member holding the key is alive now. Its services and its version come
only with calls (``Heartbeat``), which the member makes whenever they
change and to start each session. A key is good for ``lifetime`` seconds,
for one certificate of one member, and never past that certificate's
expiry; a session whose certificate was revoked (the node removed, or it
renewed and uses its new certificate) ends at its next beat, which is not
answered, so the member calls, and is told why."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import cast

from microstackd import errors
from microstackd.store import Store
from microstackd.trust import beat
from microstackd.trust.x509 import Identity

log = logging.getLogger(__name__)

#: How long a session's key is good, seconds: a member asks for a new one
#: (one call) at least this often.
SESSION_SECONDS = 3600.0

#: Bytes of datagrams the kernel queues for the endpoint while the loop is
#: busy: a beat takes ~1 KB of it (its buffer), so ~4,000 beats, 4 s of
#: 10,000 members' beats. The default (~200 KB) drops beats during a 0.2 s
#: status call at that scale.
RECEIVE_BUFFER = 4 << 20


def _deepen(sock: socket.socket | None) -> None:
    """Ask for ``RECEIVE_BUFFER`` (past ``net.core.rmem_max`` where allowed:
    root); the kernel's limit otherwise."""
    if sock is None:
        return
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    for option in (force, socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, RECEIVE_BUFFER)
            return
        except OSError:
            continue


class Beats(asyncio.DatagramProtocol):
    """Every member's current session, and (once ``open``) the endpoint their
    beats arrive at. ``saw(identity)`` is called for each beat taken and
    ``interval()`` says what to ask members for in the acknowledgement."""

    def __init__(
        self,
        store: Store,
        saw: Callable[[Identity], None],
        interval: Callable[[], int],
        lifetime: float = SESSION_SECONDS,
    ) -> None:
        self._store = store
        self._saw = saw
        self._interval = interval
        self.lifetime = lifetime
        self._sessions: dict[int, beat.Session] = {}
        #: member name -> the key id of its session.
        self._by_name: dict[str, int] = {}
        self._transport: asyncio.DatagramTransport | None = None
        #: The UDP port beats are taken on (0: none, members beat on the stream).
        self.port = 0
        #: Datagrams dropped: not a beat, unknown session, bad MAC, replayed,
        #: revoked, expired; and beats taken (what the tests read).
        self.dropped = 0
        self.taken = 0

    # ------------------------------------------------------------ endpoint --

    async def open(self, host: str, port: int) -> None:
        """Take beats on UDP ``host``:``port`` (the cluster port's number).
        One that cannot be bound is a warning, not a failure: members are then
        offered no key and beat on their stream, as before."""
        if self._transport is not None:
            return
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self, local_addr=(host or "0.0.0.0", port), family=family
            )
        except OSError as exc:
            log.warning(
                "heartbeat datagrams off: cannot bind UDP %s:%d (%s); members beat on their "
                "streams",
                host,
                port,
                exc.strerror or exc,
            )
            return
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        _deepen(transport.get_extra_info("socket"))

    def close(self) -> None:
        transport, self._transport = self._transport, None
        self.port = 0
        self._sessions.clear()
        self._by_name.clear()
        if transport is not None:
            transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an acknowledgement (the member went away): nothing to do.
        log.debug("heartbeat datagram error=%s", exc)

    # ------------------------------------------------------------ sessions --

    def issue(self, identity: Identity) -> tuple[int, bytes, float] | None:
        """A new session for the member calling with ``identity`` (its call was
        authorised): (key id, key, seconds it is good), or None when beats are
        not taken. The member's previous session ends."""
        if self._transport is None:
            return None
        self.forget(identity.name)
        key_id, key = beat.new_key()
        while key_id in self._sessions:  # 1 in 2^64; never reuse one
            key_id, key = beat.new_key()
        now = time.time()
        session = beat.Session(identity, key_id, key, now + self.lifetime)
        self._sessions[key_id] = session
        self._by_name[identity.name] = key_id
        return key_id, key, min(self.lifetime, max(0.0, session.cert_expires - now))

    def forget(self, name: str) -> None:
        """End ``name``'s session (its certificate was revoked, or it gets a new one)."""
        key_id = self._by_name.pop(name, None)
        if key_id is not None:
            self._sessions.pop(key_id, None)

    def sessions(self) -> int:
        return len(self._sessions)

    # --------------------------------------------------------------- beats --

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        taken = self.take(data)
        if taken is not None and self._transport is not None:
            session, counter = taken
            self._transport.sendto(
                beat.seal_ack(session.key_id, session.key, counter, self._interval()), addr
            )

    def take(self, data: bytes) -> tuple[beat.Session, int] | None:
        """The session a datagram is a good beat of and its counter (recorded
        as seen), or None: dropped. A session whose certificate was revoked ends here."""
        key_id = beat.beat_key_id(data)  # None for any other size: no copy, no parse
        session = None if key_id is None else self._sessions.get(key_id)
        if session is None:
            self.dropped += 1
            return None
        counter = session.take(data, time.time())
        if counter is None:
            self.dropped += 1
            return None
        try:
            revoked = self._store.is_revoked(session.serial)
        except errors.MicrostackError as exc:  # the store is unreadable: not seen
            log.warning("heartbeat datagram not taken error=%s", exc.message)
            self.dropped += 1
            return None
        if revoked:
            log.info(
                "heartbeat datagram of %s under revoked certificate %s: its session ends",
                session.identity.name,
                session.serial[:16],
            )
            self.forget(session.identity.name)
            self.dropped += 1
            return None
        self.taken += 1
        self._saw(session.identity)
        return session, counter
