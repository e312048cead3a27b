"""Online-guessing defence: failed bootstraps lock out their source address.

Pure (the caller passes ``now``). The first ``free`` failures from a source
cost nothing (an operator mistyping); each one after that doubles the
source's lock-out, from ``base`` up to ``cap`` seconds. A success clears it.
Other sources are never affected.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Entry:
    failures: int
    until: float


class FailureLimiter:
    def __init__(
        self, base: float = 1.0, cap: float = 60.0, free: int = 2, max_sources: int = 100_000
    ) -> None:
        self.base = base
        self.free = free
        self.cap = cap
        self._max_sources = max_sources
        self._entries: dict[str, _Entry] = {}

    def retry_after(self, source: str, now: float) -> float:
        """Seconds ``source`` must still wait; 0 when it may try."""
        entry = self._entries.get(source)
        return 0.0 if entry is None else max(0.0, entry.until - now)

    def failed(self, source: str, now: float) -> float:
        """Record a failure; return the lock-out it earned."""
        entry = self._entries.get(source)
        failures = 1 if entry is None else entry.failures + 1
        charged = failures - self.free
        delay = 0.0 if charged <= 0 else min(self.cap, self.base * 2.0 ** (charged - 1))
        if entry is None and len(self._entries) >= self._max_sources:
            self._forget_expired(now)
        self._entries[source] = _Entry(failures, now + delay)
        return delay

    def succeeded(self, source: str) -> None:
        self._entries.pop(source, None)

    def _forget_expired(self, now: float) -> None:
        for source in [s for s, e in self._entries.items() if e.until + self.cap < now]:
            del self._entries[source]
