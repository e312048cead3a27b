"""Fan-out of persisted events to live streams, with replay from the store;
and the signals the domain raises for the wiring (``Signal``).

A follower never misses an event and never sees one twice: it subscribes
first, then replays what the store holds after ``after_seq``, then takes
live events, dropping any it already replayed.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable

from microstackd import errors
from microstackd.model import EventRecord
from microstackd.store import Store


class EventBus:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._queues: defaultdict[str, set[asyncio.Queue[EventRecord | None]]] = defaultdict(set)
        self._closed = False

    def publish(self, event: EventRecord) -> None:
        for queue in self._queues.get(event.node, ()):
            queue.put_nowait(event)

    def shutdown(self) -> None:
        """End every live stream with ``errors.ShuttingDown`` (a clear status
        for the client, which re-attaches once the daemon is back)."""
        self._closed = True
        for queues in self._queues.values():
            for queue in queues:
                queue.put_nowait(None)

    async def follow(self, node: str, after_seq: int = 0) -> AsyncIterator[EventRecord]:
        """Every event of ``node`` after ``after_seq``, until a final one."""
        if self._closed:
            raise errors.ShuttingDown()
        queue: asyncio.Queue[EventRecord | None] = asyncio.Queue()
        self._queues[node].add(queue)
        try:
            last = after_seq
            for event in self._store.events(node, after_seq):
                last = event.seq
                yield event
                if event.final:
                    return
            while True:
                live = await queue.get()
                if live is None:
                    raise errors.ShuttingDown()
                if live.seq:
                    if live.seq <= last:
                        continue
                    last = live.seq
                # seq 0: not persisted (the store could not record it): live only
                yield live
                if live.final:
                    return
        finally:
            self._queues[node].discard(queue)
            if not self._queues[node]:
                del self._queues[node]


Subscriber = Callable[[], Awaitable[None]]


class Signal:
    """Something a domain object announces and the wiring reacts to (this node
    became a member, this node left): the domain never calls up into it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    async def emit(self) -> None:
        for subscriber in self._subscribers:
            await subscriber()
