"""`watch` follows the current enrolment only (issue 14, item 10): after a
removal and a rejoin it shows the new enrolment's events, not the old
one's; and a member re-attaching its Enrol stream never makes the control
append another final event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from microstackd.model import StepState
from microstackd.peers.cluster import ControlClient
from microstackd.store import Store
from tests.integration.harness import Node


def _watch(control: Node, node: str, *extra: str) -> list[dict[str, Any]]:
    out = control.ctl("watch", node, "--format", "json", *extra).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _reattach(member: Node, after: int | None) -> list[tuple[int, str, bool]]:
    """Re-attach the member's Enrol stream as its daemon does; what it got."""
    store = Store(member.state_dir)
    try:
        cluster, creds = store.cluster(), store.credentials()
    finally:
        store.close()
    assert cluster is not None

    async def follow() -> list[tuple[int, str, bool]]:
        client = ControlClient(cluster, creds)
        got = []
        try:
            async with asyncio.timeout(20):
                async for event in client.enrol(after):
                    got.append((event.seq, event.state.value, event.final))
                    if event.final:
                        break
        finally:
            await client.close()
        return got

    return asyncio.run(follow())


def test_reattaching_never_appends_another_final_event(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    member = make_node("node-1")
    member.join(control, password_file)
    events = _watch(control, "node-1")
    final = events[-1]
    assert final["final"] and final["state"] == "done"
    for after in (None, 0, final["seq"] - 1, final["seq"]):
        got = _reattach(member, after)
        assert got and got[-1] == (final["seq"], StepState.DONE.value, True), (after, got)
    again = _watch(control, "node-1")
    assert again == events, "a re-attach changed the enrolment's recorded events"
    assert [e for e in again if e["final"]] == [final]


def test_watch_after_a_remove_and_a_rejoin_follows_the_new_enrolment(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    member = make_node("node-1")
    member.join(control, password_file)
    old = _watch(control, "node-1")
    control.ctl("remove", "node-1")
    member.join(control, password_file)

    new = _watch(control, "node-1")
    assert new, "no events"
    assert [e for e in new if e["final"]] == [new[-1]]
    assert new[-1]["state"] == "done"
    old_end = datetime.fromisoformat(old[-1]["time"])
    # Times are to the second: a quick rejoin's first events share the old one's last second.
    assert all(datetime.fromisoformat(e["time"]) >= old_end for e in new), new
    assert not {e["seq"] for e in new} & {e["seq"] for e in old}, (old, new)
    assert new[0]["step"] == "admit"
    # Sequence numbers go on from the old enrolment's: a follower that
    # remembers an old one never mistakes a new event for one it has seen.
    assert new[0]["seq"] > old[-1]["seq"]
    later = _watch(control, "node-1", "--after", str(new[1]["seq"]))
    assert later == new[2:]
