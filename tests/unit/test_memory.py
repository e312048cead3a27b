"""microstackd.memory: which mappings a trim drops (read-only file pages no
one wrote), and that a process that trimmed goes on working with the
pages it dropped (grpc's core, cryptography, ssl)."""

from __future__ import annotations

import json
import subprocess
import sys

from microstackd import memory

SMAPS = """\
55d0a0000000-55d0a0100000 r-xp 00000000 08:01 123 /usr/lib/libgrpc.so
Rss:                1024 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
Shared_Dirty:          0 kB
Swap:                  0 kB
55d0a0100000-55d0a0200000 r--p 00100000 08:01 123 /usr/lib/libgrpc.so
Rss:                 512 kB
Anonymous:             8 kB
Private_Dirty:         8 kB
Shared_Dirty:          0 kB
Swap:                  0 kB
55d0a0200000-55d0a0300000 rw-p 00200000 08:01 123 /usr/lib/libgrpc.so
Rss:                  64 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
Shared_Dirty:          0 kB
Swap:                  0 kB
7f0000000000-7f0000100000 r-xp 00000000 00:00 0 [vdso]
Rss:                   4 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
Shared_Dirty:          0 kB
Swap:                  0 kB
7f0000100000-7f0000200000 r--p 00000000 00:01 9 /memfd:x (deleted)
Rss:                   4 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
Shared_Dirty:          0 kB
Swap:                  0 kB
7f0000200000-7f0000300000 r--p 00000000 08:01 77 /usr/lib/with space.so
Rss:                  16 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
Shared_Dirty:          0 kB
"""


def test_only_read_only_file_mappings_never_written_are_dropped() -> None:
    found = memory.mappings(SMAPS)
    assert [(m.perms, m.path, m.droppable) for m in found] == [
        ("r-xp", "/usr/lib/libgrpc.so", True),
        ("r--p", "/usr/lib/libgrpc.so", False),  # relro: written once, copy-on-write
        ("rw-p", "/usr/lib/libgrpc.so", False),  # writable
        ("r-xp", "[vdso]", False),
        ("r--p", "/memfd:x (deleted)", False),
        ("r--p", "/usr/lib/with space.so", False),  # no Swap line: not known to be 0
    ]
    assert found[0].fields["Rss"] == 1024
    assert found[0].end - found[0].start == 0x100000


_CHILD = """
import asyncio, json
from pathlib import Path

def rss_file():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])

import grpc
from grpc import aio
from cryptography.hazmat.primitives.asymmetric import ec
from microstackd import memory
from microstackd.trust import x509

before = rss_file()
freed = memory.trim()
after = rss_file()

async def serve():
    server = aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await asyncio.wait_for(channel.channel_ready(), 10)
    finally:
        await channel.close()
        await server.stop(0)

asyncio.run(serve())
key = x509.generate_key()
csr = x509.make_csr(key, "node-1")
print(json.dumps({"before": before, "after": after, "freed": freed, "csr": len(csr)}))
"""


def test_a_trimmed_process_gives_back_its_file_pages_and_goes_on_working() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(out.stdout)
    assert result["freed"] > 0
    assert result["after"] < result["before"]
    assert result["csr"] > 0  # cryptography, after its pages were dropped
