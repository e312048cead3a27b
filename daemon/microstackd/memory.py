"""Give back the memory a burst of work leaves mapped: after start-up, an
``init``, a join or an enrolment, a daemon that then idles holds pages it
will not touch again until the next such burst.

* **Library text.** Importing grpc's core (a 17 MB shared library) runs its
  static initialisers across the whole text, and the kernel maps 64 KB of
  cached file around each fault: ~25 MB of file-backed pages stay in the
  daemon's RSS that idle never uses (docs/performance.md, "Idle RSS").
  ``trim`` unmaps the read-only, never-written file mappings (``r-xp`` /
  ``r--p`` with no anonymous, i.e. copy-on-write, page and nothing dirty):
  ``MADV_DONTNEED``, which for such pages is what the kernel's own reclaim
  does. They stay in the page cache; the next use maps them again (a minor
  fault each, no disk read). A mapping with one written page is left
  alone: dropping it would lose the write.
* **The C heap.** ``malloc_trim(0)`` returns glibc's free heap pages.

Nothing here changes what the daemon computes; its cost is one read of
``/proc/self/smaps`` (~1 ms) per trim.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
#: Only mappings of these permissions: read-only, private. The dynamic loader
#: maps text and read-only data so from the start and never writes them;
#: what it writes (relocations) it maps writable, and what of that it makes
#: read-only afterwards (RELRO) holds copy-on-write pages, which ``droppable``
#: refuses: no trim can race a library being loaded into dropping a write.
_READ_ONLY = ("r-xp", "r--p")
#: smaps fields that must all be 0 kB for a mapping to be dropped.
_UNTOUCHED = ("Anonymous", "Private_Dirty", "Shared_Dirty", "Swap")


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    path: str
    #: kB per smaps field (Rss, Anonymous, ...).
    fields: dict[str, int]

    @property
    def droppable(self) -> bool:
        """Read-only file text or data no page of which was ever written."""
        return (
            self.perms in _READ_ONLY
            and self.path.startswith("/")
            and not self.path.endswith(" (deleted)")
            and all(self.fields.get(f, 1) == 0 for f in _UNTOUCHED)
        )


def mappings(smaps: str) -> list[Mapping]:
    """The mappings of a ``/proc/PID/smaps`` text."""
    found: list[Mapping] = []
    head: list[str] | None = None
    fields: dict[str, int] = {}

    def close() -> None:
        if head is not None:
            start, _, end = head[0].partition("-")
            path = " ".join(head[5:]) if len(head) > 5 else ""
            found.append(Mapping(int(start, 16), int(end, 16), head[1], path, dict(fields)))

    for line in smaps.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0].endswith(":"):
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1])
            continue
        close()
        head, fields = parts, {}
    close()
    return found


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc


_LIBC = _libc()


def trim(smaps_path: Path = Path("/proc/self/smaps")) -> int:
    """Unmap this process's idle read-only file pages and trim the C heap;
    the kB of RSS given back by the mappings (0 where it cannot be done)."""
    if _LIBC is None:
        return 0
    try:
        text = smaps_path.read_text()
    except OSError:
        return 0
    freed = 0
    for m in mappings(text):
        if m.droppable and m.fields.get("Rss", 0):
            if _LIBC.madvise(m.start, m.end - m.start, MADV_DONTNEED) == 0:
                freed += m.fields["Rss"]
    malloc_trim = getattr(_LIBC, "malloc_trim", None)  # glibc only
    if malloc_trim is not None:
        malloc_trim(0)
    log.info("memory trimmed file_pages_kb=%d", freed)
    return freed


#: How often the daemon looks whether it has been quiet.
QUIET_CHECK_SECONDS = 5.0
#: Quiet: less CPU than this share of the time since the last look.
QUIET_SHARE = 0.05
#: Worth a trim: at least this much CPU (s) since the last one (a burst of work).
BURST_CPU_SECONDS = 0.2


class Trimmer:
    """Trims once the daemon is up, then whenever it has been quiet for a
    look (``QUIET_CHECK_SECONDS``) after a burst of work: a node that joined,
    an init, a flood of joins. A daemon that stays busy is never trimmed
    (it would map the pages again at once); one that idles is trimmed once."""

    def __init__(self, check: float = QUIET_CHECK_SECONDS) -> None:
        self._check = check
        self._task: asyncio.Task[None] | None = None
        #: Trims done, and kB given back in all (for logs and tests).
        self.trims = 0
        self.freed_kb = 0

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def trim(self) -> None:
        self.trims += 1
        self.freed_kb += trim()

    async def _run(self) -> None:
        self.trim()
        trimmed_at = last = time.process_time()
        while True:
            await asyncio.sleep(self._check)
            now = time.process_time()
            quiet = now - last < self._check * QUIET_SHARE
            if quiet and now - trimmed_at >= BURST_CPU_SECONDS:
                self.trim()
                trimmed_at = time.process_time()
            last = time.process_time()
