"""Online-guessing defence: failed bootstraps lock out their source, and a
source may hold only so many exchanges open.

Pure (the caller passes ``now``). The first ``free`` failures from a source
cost nothing (an operator mistyping); each one after that doubles the
source's lock-out, from ``base`` up to ``cap`` seconds. A success clears it.
Other sources are never affected.

A *source* (``source_key``) is an IPv4 address, or an IPv6 /64: one host
gets a whole /64 to pick addresses from (SLAAC, privacy addresses, RFC 7421)
and a network hands out /64s or larger, so counting IPv6 by address would
give an attacker 2^64 budgets; a /64 is the smallest unit that costs one.
The price: machines on one IPv6 LAN share one budget.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


def source_key(address: str) -> str:
    """What a failure or an open exchange is counted against: the IPv4
    address (an IPv4-mapped IPv6 one too), or the IPv6 /64 around it."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


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


class OpenLimit:
    """At most ``per_source`` things open per source at a time."""

    def __init__(self, per_source: int) -> None:
        self.per_source = per_source
        self._open: dict[str, int] = {}

    def acquire(self, source: str) -> bool:
        """Take one for ``source``; False (nothing taken) when it holds its share."""
        held = self._open.get(source, 0)
        if held >= self.per_source:
            return False
        self._open[source] = held + 1
        return True

    def release(self, source: str) -> None:
        held = self._open.get(source, 0) - 1
        if held > 0:
            self._open[source] = held
        else:
            self._open.pop(source, None)

    def held(self, source: str) -> int:
        return self._open.get(source, 0)


class Quiet:
    """Log a refusal once per source per ``window`` seconds, counting the
    ones it kept quiet about: refusals are what a flood is made of."""

    def __init__(self, window: float = 10.0, max_sources: int = 10_000) -> None:
        self.window = window
        self._max = max_sources
        self._seen: dict[str, tuple[float, int]] = {}

    def speak(self, source: str, now: float) -> int | None:
        """None: stay quiet; else how many were kept quiet before this one."""
        until, quiet = self._seen.get(source, (0.0, 0))
        if now < until:
            self._seen[source] = (until, quiet + 1)
            return None
        if len(self._seen) >= self._max:
            self._seen = {s: e for s, e in self._seen.items() if e[0] > now}
        self._seen[source] = (now + self.window, 0)
        return quiet
