"""The gate in front of the bootstrap port: caps on TCP connections per
source and in all, which grpc's server cannot do (it has a total cap only,
and no way to tell sources apart before a call).

The public bootstrap port is this gate, an asyncio TCP relay; the gRPC
bootstrap server listens on loopback behind it, and TLS runs end to end
through it (the gate never sees a byte in the clear, and the certificate
the joiner is shown is the server's own). Per connection it costs a
loopback connect and a copy of each chunk.

Rules:

1. A *source* is ``ratelimit.source_key`` of the peer's address (an IPv4
   address, or an IPv6 /64). A source holds at most ``per_source``
   connections; one more is closed at once (RST).
2. At most ``total`` connections in all, well below the descriptor limit
   (each costs three descriptors: the gate's two and grpc's one), so the
   local socket, the mTLS port and the state directory keep theirs under a
   flood. When full, a newcomer takes the place of the oldest connection of
   the source holding the most, unless its own source holds as many: a
   flood from many addresses (even one connection each) cannot lock a
   joiner out, it only recycles its own connections, which are older.
3. The gRPC server behind the gate sees the gate as its peer; ``source_of``
   maps the gate's end of a relayed connection (gRPC's peer string) back to
   the real source, for the failure limiter and the logs.
4. Refusals are logged once per reason per 10 s, with a count: they are
   what a flood is made of.

No gRPC here: bytes in, bytes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass

from microstackd.control.ratelimit import Quiet, source_key

log = logging.getLogger(__name__)

#: Descriptors kept for everything but the bootstrap port's connections.
FD_RESERVE = 256
#: Descriptors one relayed connection costs (the gate's two, grpc's one).
FDS_PER_CONNECTION = 3
#: Bytes buffered towards a slow side before the other side is paused.
_HIGH_WATER = 256 * 1024


@dataclass(frozen=True)
class Limits:
    per_source: int
    total: int

    @classmethod
    def within(cls, per_source: int, total: int, fd_limit: int) -> Limits:
        """``total`` lowered to what ``fd_limit`` descriptors leave room for."""
        room = max(1, (fd_limit - FD_RESERVE) // FDS_PER_CONNECTION)
        return cls(per_source=max(1, per_source), total=max(1, min(total, room)))


def _address(peername: object) -> str:
    if isinstance(peername, tuple) and peername:
        return str(peername[0])
    return "unknown"


class _Pipe(asyncio.Protocol):
    """One side of a relayed connection; writes what it reads to its peer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.write(data)

    def eof_received(self) -> bool | None:
        return False  # close: TLS has said goodbye before any FIN

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.close()  # after what is still buffered for it

    # The other side cannot take more yet: stop reading this one.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Inbound(_Pipe):
    """A connection from a joiner (or anyone) to the public port."""

    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self._gate = gate
        self.address = ""
        self.key = ""
        self.admitted = False
        self.backend_port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.address = _normalise(_address(transport.get_extra_info("peername")))
        self.key = source_key(self.address)
        if not self._gate._admit(self):
            self.transport.abort()
            return
        self.transport.pause_reading()  # nothing is read before the backend is there
        self._gate._connect(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._gate._release(self)


def _normalise(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return address


class Gate:
    """Relays the public bootstrap port to the gRPC server on loopback."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._by_source: dict[str, OrderedDict[int, _Inbound]] = {}
        self._count = 0
        #: The gate's local port of each relayed connection -> its real source.
        self._sources: dict[int, str] = {}
        self._backend: tuple[str, int] = ("127.0.0.1", 0)
        self._family = socket.AF_INET
        self._server: asyncio.Server | None = None
        self._quiet = Quiet()
        self._refusals: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connections(self) -> int:
        return self._count

    async def start(self, host: str, port: int, backend: tuple[str, int]) -> int:
        """Listen on ``host:port`` (0: any) for ``backend``; the port bound."""
        self._backend = backend
        self._family = socket.AF_INET6 if ":" in backend[0] else socket.AF_INET
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Inbound(self), host, port, reuse_address=True, backlog=1024
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop accepting; end every relayed connection."""
        if self._server is not None:
            self._server.close()
        for conns in list(self._by_source.values()):
            for inbound in list(conns.values()):
                if inbound.transport is not None:
                    inbound.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)  # the aborted transports close on the next turn
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def source_of(self, peer: str) -> str:
        """The real source of the connection gRPC calls ``peer`` (rule 3); a
        caller that did not come through the gate (a local one on loopback)
        is its own source."""
        host, _, port = peer.partition(":")[2].rpartition(":")
        if port.isascii() and port.isdigit():
            found = self._sources.get(int(port))
            if found is not None:
                return found
        return host.strip("[]") or peer

    # -- admission ---------------------------------------------------------------------------

    def _admit(self, inbound: _Inbound) -> bool:
        mine = self._by_source.get(inbound.key)
        held = len(mine) if mine else 0
        if held >= self.limits.per_source:
            self._refused("per-source", inbound)
            return False
        if self._count >= self.limits.total and not self._evict_for(held):
            self._refused("total", inbound)
            return False
        self._by_source.setdefault(inbound.key, OrderedDict())[id(inbound)] = inbound
        self._count += 1
        inbound.admitted = True
        return True

    def _evict_for(self, held: int) -> bool:
        """Make room for a source holding ``held`` (rule 2)."""
        heaviest = max(self._by_source.values(), key=len, default=None)
        if heaviest is None or len(heaviest) <= held:  # it is (one of) the busiest itself
            return False
        _, victim = heaviest.popitem(last=False)  # its oldest
        self._forget(victim)
        if victim.transport is not None:
            victim.transport.abort()
        self._refused("evicted", victim)
        return True

    def _release(self, inbound: _Inbound) -> None:
        conns = self._by_source.get(inbound.key)
        if conns is not None and conns.pop(id(inbound), None) is not None:
            self._forget(inbound)

    def _forget(self, inbound: _Inbound) -> None:
        if not inbound.admitted:
            return
        inbound.admitted = False
        self._count -= 1
        conns = self._by_source.get(inbound.key)
        if conns is not None and not conns:
            del self._by_source[inbound.key]
        if inbound.backend_port:
            self._sources.pop(inbound.backend_port, None)

    def _refused(self, reason: str, inbound: _Inbound) -> None:
        self._refusals[reason] = self._refusals.get(reason, 0) + 1
        quiet = self._quiet.speak(reason, time.monotonic())
        if quiet is not None:
            log.warning(
                "bootstrap port connection %s source=%s key=%s per_source=%d total=%d open=%d "
                "refused_quietly=%d",
                "closed" if reason == "evicted" else "refused",
                inbound.address, inbound.key, self.limits.per_source, self.limits.total,
                self._count, quiet,
            )  # fmt: skip

    # -- relaying ----------------------------------------------------------------------------

    def _connect(self, inbound: _Inbound) -> None:
        task = asyncio.get_running_loop().create_task(self._relay(inbound))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, inbound: _Inbound) -> None:
        loop = asyncio.get_running_loop()
        outbound = _Pipe()
        # A socket of our own: create_connection(host, port) would resolve
        # the (numeric) address in a worker thread on every connection.
        sock = socket.socket(self._family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small writes go now
            sock.setblocking(False)
            await loop.sock_connect(sock, self._backend)
            await loop.create_connection(lambda: outbound, sock=sock)
        except OSError as exc:
            sock.close()
            log.warning("bootstrap port: its server does not answer on loopback: %s", exc)
            if inbound.transport is not None:
                inbound.transport.abort()
            return
        assert outbound.transport is not None and inbound.transport is not None
        if inbound.closed or not inbound.admitted:  # gone (or evicted) meanwhile
            outbound.transport.abort()
            return
        inbound.backend_port = int(outbound.transport.get_extra_info("sockname")[1])
        self._sources[inbound.backend_port] = inbound.address
        inbound.peer, outbound.peer = outbound, inbound
        inbound.transport.resume_reading()
