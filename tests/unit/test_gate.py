"""The gate in front of the bootstrap port (api/gate.py): relays bytes both
ways, caps connections per source and in all, makes room for a newcomer
from a quiet source, and tells the server behind it who is really calling.
On loopback: an echo server stands in for the gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from microstackd.api.gate import FD_RESERVE, FDS_PER_CONNECTION, Gate, Limits


class Echo:
    """The server behind the gate: echoes, and remembers who it saw."""

    def __init__(self) -> None:
        self.peers: list[tuple[str, int]] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername"))
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()


#: Every client connection a test opened, closed when its gate closes.
_OPENED: list[asyncio.StreamWriter] = []


@contextlib.asynccontextmanager
async def gate(per_source: int, total: int) -> AsyncIterator[tuple[Gate, int, Echo]]:
    echo = Echo()
    backend = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
    g = Gate(Limits(per_source, total))
    port = await g.start("127.0.0.1", 0, ("127.0.0.1", backend.sockets[0].getsockname()[1]))
    try:
        yield g, port, echo
    finally:
        await g.close()
        for writer in [*_OPENED, *echo.writers]:
            writer.transport.abort()
        _OPENED.clear()
        backend.close()
        await asyncio.sleep(0.05)
        await backend.wait_closed()


async def _connect(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    _OPENED.append(writer)
    return reader, writer


async def _alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    try:
        writer.write(b"ping")
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(4), 2) == b"ping"
    except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
        return False


def test_bytes_go_through_both_ways_and_the_server_learns_the_real_source() -> None:
    async def go() -> None:
        async with gate(8, 100) as (g, port, echo):
            reader, writer = await _connect(port, "127.0.0.7")
            big = bytes(range(256)) * 8192  # 2 MiB: back-pressure on the way
            writer.write(big)
            await writer.drain()
            assert await reader.readexactly(len(big)) == big
            host, gate_port = echo.peers[0]
            assert g.source_of(f"ipv4:{host}:{gate_port}") == "127.0.0.7"
            assert g.source_of("ipv4:127.0.0.1:1") == "127.0.0.1"  # not through the gate
            writer.close()

    asyncio.run(go())


def test_a_source_holds_at_most_its_share() -> None:
    async def go() -> None:
        async with gate(3, 100) as (g, port, _):
            conns = [await _connect(port, "127.0.0.8") for _ in range(5)]
            alive = [await _alive(*c) for c in conns]
            assert alive == [True, True, True, False, False]
            assert await _alive(*(await _connect(port, "127.0.0.9")))  # another source
            assert g.connections == 4

    asyncio.run(go())


def test_when_full_a_newcomer_takes_the_place_of_the_busiest_sources_oldest() -> None:
    async def go() -> None:
        async with gate(5, 6) as (g, port, _):
            flood = [await _connect(port, "127.0.0.10") for _ in range(5)]
            quiet = await _connect(port, "127.0.0.11")
            assert all([await _alive(*c) for c in [*flood, quiet]])
            newcomer = await _connect(port, "127.0.0.12")
            assert await _alive(*newcomer)
            assert [await _alive(*c) for c in flood] == [False, True, True, True, True]
            assert await _alive(*quiet)
            # Room is made as long as another source holds more than the newcomer's.
            more = [await _connect(port, "127.0.0.12") for _ in range(3)]
            assert [await _alive(*c) for c in more] == [True, True, False]
            assert [await _alive(*c) for c in flood] == [False, False, False, True, True]
            assert await _alive(*quiet) and g.connections == 6

    asyncio.run(go())


def test_a_flood_of_one_connection_per_address_still_makes_room() -> None:
    async def go() -> None:
        async with gate(5, 4) as (g, port, _):
            flood = [await _connect(port, f"127.0.1.{i}") for i in range(1, 5)]
            assert all([await _alive(*c) for c in flood])
            joiner = await _connect(port, "127.0.2.1")
            assert await _alive(*joiner)
            assert [await _alive(*c) for c in flood] == [False, True, True, True]

    asyncio.run(go())


def test_the_total_stays_within_the_descriptor_limit() -> None:
    assert Limits.within(8, 1024, 65536).total == 1024
    small = Limits.within(8, 1024, 1024)
    assert small.total == (1024 - FD_RESERVE) // FDS_PER_CONNECTION
    assert Limits.within(8, 1024, 100).total == 1
