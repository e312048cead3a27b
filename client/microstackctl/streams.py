"""Following a stream of events (init, join, watch) to its final one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Protocol

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import render
from microstackctl.errors import CommandError

#: The joining daemon's own step before the control's enrolment (docs/api.md, Streams).
BOOTSTRAP_STEP = "bootstrap"


class Watcher(Protocol):
    def watch(self, node: str, after_seq: int) -> Iterator[pb.Event]: ...


def stream(fmt: str, events: Iterator[pb.Event], what: str) -> None:
    """Show a stream of events; exit non-zero unless it ended done."""
    with render.Progress(fmt) as progress:
        last = progress.run(events)
    finish(last, what)


def finish(last: pb.Event | None, what: str) -> None:
    if last is None or not last.final:
        raise CommandError(
            f"the {what} stream ended before the {what} finished; run the command again to resume"
        )
    if last.state != pb.STEP_STATE_DONE:
        raise CommandError(f"{what} failed at step {last.step}: {last.message}")


def follow(
    connect: Callable[[], Watcher],
    fmt: str,
    first: Iterator[pb.Event],
    node: str,
    what: str,
    timeout: float,
) -> None:
    """Show ``first``; if the local daemon goes away mid-stream, wait for it
    and re-attach with Watch (on a new ``connect()``) from the last event
    shown: nothing is shown twice.

    Re-attaching makes sense once the enrolment exists on the control: after
    any event of the control's (seq > 0) or once bootstrap is done (the node
    is trusted and its daemon resumes the enrolment when it restarts), even
    if the daemon went away before relaying the control's first event."""
    last_seq = 0
    lost_since = 0.0
    trusted = False

    def reattach() -> Iterator[pb.Event]:
        while True:
            try:
                yield from connect().watch(node, last_seq)
                return
            except CommandError as exc:
                if not exc.daemon_lost or time.monotonic() - lost_since > timeout:
                    raise
            time.sleep(1)

    with render.Progress(fmt) as progress:
        events = first
        while True:
            try:
                for event in events:
                    lost_since = 0.0
                    if event.seq and event.seq <= last_seq:
                        continue
                    last_seq = max(last_seq, event.seq)
                    trusted = (
                        trusted
                        or bool(event.seq)
                        or (event.step == BOOTSTRAP_STEP and event.state == pb.STEP_STATE_DONE)
                    )
                    progress.show(event)
                    if event.final:
                        break
                break
            except CommandError as exc:
                if not exc.daemon_lost or not trusted:
                    raise
                lost_since = lost_since or time.monotonic()
                if fmt != "json":
                    progress.notice(f"… lost the local microstackd; re-attaching ({exc.message})")
                time.sleep(1)
                events = reattach()
        last = progress.last
    finish(last, what)
