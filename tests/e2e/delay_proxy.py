"""A TCP proxy that delays every chunk by a fixed time in each direction:
the latency half of the fault injection (this kernel has no netem).

    python -m tests.e2e.delay_proxy LISTEN_HOST TARGET_HOST DELAY_MS PORT [PORT ...]

Listens on LISTEN_HOST:PORT for each PORT and forwards to TARGET_HOST:PORT.
Runs until killed; the test that starts it kills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def send() -> None:
        while True:
            data = await queue.get()
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()

    loop = asyncio.get_running_loop()
    sender = asyncio.ensure_future(send())
    with contextlib.suppress(ConnectionError):
        while True:
            data = await reader.read(65536)
            loop.call_later(delay, queue.put_nowait, data)
            if not data:
                break
    with contextlib.suppress(ConnectionError):
        await sender


async def main(listen: str, target: str, delay: float, ports: list[int]) -> None:
    async def handler(
        port: int,
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection(target, port)
            except OSError:
                writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer, delay), _pipe(up_reader, writer, delay))

        return handle

    servers = [await asyncio.start_server(await handler(p), listen, p) for p in ports]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    host, target, delay_ms, *port_args = sys.argv[1:]
    asyncio.run(main(host, target, int(delay_ms) / 1000, [int(p) for p in port_args]))
