"""A restarted control and compute, idle, never load cryptography
(docs/performance.md, "Idle RSS"): heartbeats over mTLS (the caller's
identity on every call), the renewal check every second, start-up's pair,
bundle and member-facing-name checks, and ``status`` in both formats all
read certificates through trust.der. A daemon that has just run init or a
join has made keys and signed, so it holds cryptography; the test says so
too, so that it cannot pass by looking at the wrong thing."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from tests.integration.harness import Node


def _maps_cryptography(node: Node) -> bool:
    """Whether the daemon's process has cryptography's extension mapped."""
    assert node.proc is not None
    maps = Path(f"/proc/{node.proc.pid}/maps").read_text()
    return "/cryptography/" in maps


def _last_seen_s(control: Node, name: str) -> float:
    (node,) = [n for n in control.status()["nodes"] if n["name"] == name]
    seen = datetime.fromisoformat(node["last_seen"])
    return (datetime.now(UTC) - seen).total_seconds()


def test_restarted_idle_daemons_never_load_cryptography(
    make_node: Callable[..., Node], password_file: Path
) -> None:
    fast = ("--unreachable-after", "3", "--renew-before", "8")  # beats and checks every second
    control = make_node("ctl", *fast)
    control.init_control(password_file)
    compute = make_node("node-1", *fast)
    compute.join(control, password_file)
    assert _maps_cryptography(control) and _maps_cryptography(compute)

    for node in (control, compute):
        node.stop()
    control.start()
    compute.start()
    time.sleep(4)  # heartbeats (the control reads each caller's identity), renewal checks
    for node in (control, compute):
        node.ctl("status")
        node.status()
    assert _last_seen_s(control, "node-1") < 3, control.status()
    assert not _maps_cryptography(control), "a restarted, idle control loaded cryptography"
    assert not _maps_cryptography(compute), "a restarted, idle compute loaded cryptography"
