"""Fan-out of persisted events to live streams, with replay from the store.

A follower never misses an event and never sees one twice: it subscribes
first, then replays what the store holds after ``after_seq``, then takes
live events, dropping any it already replayed.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator

from microstackd.model import EventRecord
from microstackd.store import Store


class EventBus:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._queues: defaultdict[str, set[asyncio.Queue[EventRecord]]] = defaultdict(set)

    def publish(self, event: EventRecord) -> None:
        for queue in self._queues.get(event.node, ()):
            queue.put_nowait(event)

    async def follow(self, node: str, after_seq: int = 0) -> AsyncIterator[EventRecord]:
        """Every event of ``node`` after ``after_seq``, until a final one."""
        queue: asyncio.Queue[EventRecord] = asyncio.Queue()
        self._queues[node].add(queue)
        try:
            last = after_seq
            for event in self._store.events(node, after_seq):
                last = event.seq
                yield event
                if event.final:
                    return
            while True:
                event = await queue.get()
                if event.seq <= last:
                    continue
                last = event.seq
                yield event
                if event.final:
                    return
        finally:
            self._queues[node].discard(queue)
            if not self._queues[node]:
                del self._queues[node]
