"""The floor under the heartbeat figure with datagrams: what a bare asyncio
UDP endpoint pays to take N members' beats every 10 s, in the product's
format (``trust.beat``: the MAC checked, the counter, the acknowledgement
sealed and sent), with no microstackd around it.

    python bench/datagram_floor.py [N ...]      (default 1000 10000)

Not a part of run.py (docs/performance.md quotes it beside the scale
part's heartbeat figure): the endpoint in this process, one client process
sending N members' beats evenly over each 10 s from N sockets of its own
and reading the acknowledgements; the endpoint's CPU over 20 s once the
client has run for 3 s. The load average is printed beside each.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import resource
import socket
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "daemon")]

from microstackd.trust import beat  # noqa: E402

INTERVAL = 10.0
WINDOW = 20.0


class Endpoint(asyncio.DatagramProtocol):
    """The control's part of a beat, and nothing else: look the session up,
    check the MAC and the counter, answer."""

    def __init__(self, keys: dict[int, bytes]) -> None:
        self.keys = keys
        self.counters: dict[int, int] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        key_id = beat.beat_key_id(data)
        key = None if key_id is None else self.keys.get(key_id)
        if key_id is None or key is None:
            return
        counter = beat.open_beat(data, key)
        if counter is None or counter <= self.counters.get(key_id, -1):
            return
        self.counters[key_id] = counter
        assert self.transport is not None
        self.transport.sendto(beat.seal_ack(key_id, key, counter, 10), addr)


def members(port: int, sessions: list[tuple[int, bytes]], seconds: float) -> None:
    """Beat for ``seconds``: member i every INTERVAL s, all spread evenly."""
    socks = []
    for _ in sessions:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        socks.append(sock)
    start = time.monotonic()
    step = INTERVAL / len(sessions)
    sent = 0
    while time.monotonic() - start < seconds:
        i = sent % len(sessions)
        key_id, key = sessions[i]
        socks[i].send(beat.seal_beat(key_id, key, sent // len(sessions) + 1))
        for drain in (socks[i], socks[i - 1]):
            try:
                drain.recv(64)
            except BlockingIOError:
                pass
        sent += 1
        late = start + sent * step - time.monotonic()
        if late > 0:
            time.sleep(late)


async def measure(n: int) -> str:
    sessions = [beat.new_key() for _ in range(n)]
    endpoint = Endpoint(dict(sessions))
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: endpoint, local_addr=("127.0.0.1", 0)
    )
    port = transport.get_extra_info("sockname")[1]
    client = multiprocessing.Process(target=members, args=(port, sessions, WINDOW + 5))
    client.start()
    try:
        await asyncio.sleep(3)
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        await asyncio.sleep(WINDOW)
        r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    finally:
        client.join()
        transport.close()
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    beats = (w1 - w0) * n / INTERVAL
    load = os.getloadavg()[0]
    return (
        f"N={n}: {100 * cpu / (w1 - w0):.2f} % of a core, {1e6 * cpu / beats:.0f} us a beat "
        f"({len(endpoint.counters)} members heard; "
        f"load {load:.1f})"
    )


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000]
    for n in sizes:
        print(asyncio.run(measure(n)), flush=True)


if __name__ == "__main__":
    main()
