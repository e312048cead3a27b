"""The inner half of test_harness.py's clean-up tests, run in a child pytest.

Not collected in normal runs (the name does not match ``test_*.py``); the
outer test passes this file explicitly, with MST_SELFTEST_RECORD set.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from sandbox import netns
from sandbox.netns import Network

pytestmark = pytest.mark.e2e


def _record(network: Network) -> None:
    a, b = network.add_host("a"), network.add_host("b")
    tracked = a.popen(["sleep", "600"])
    stubborn = b.popen(["sh", "-c", "trap '' TERM; sleep 600 & wait"])
    # Escapes the harness's bookkeeping: only the per-namespace kill finds it.
    escaped = b.run(["sh", "-c", "setsid sleep 600 >/dev/null 2>&1 & echo $!"]).stdout
    netns.wait_for(lambda: len(netns.namespace_pids(b.ns)) >= 3, 5, "processes in b")
    pids = [tracked.pid, stubborn.pid, int(escaped), *netns.namespace_pids(b.ns)]
    record = {
        "pid": os.getpid(),
        "prefix": network.prefix,
        "namespaces": network.namespaces(),
        "rundir": str(network.rundir),
        "pids": sorted(set(pids)),
        "direct": [tracked.pid, stubborn.pid],
    }
    Path(os.environ["MST_SELFTEST_RECORD"]).write_text(json.dumps(record))


def test_fails_with_processes_running(network: Network) -> None:
    _record(network)
    raise AssertionError("deliberate failure")


def test_hangs_until_killed(network: Network) -> None:
    _record(network)
    time.sleep(600)
