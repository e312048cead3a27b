"""`microstackctl watch`: replay a node's enrolment, then follow it live."""

from __future__ import annotations

from microstackctl import streams
from microstackctl.api import connect


def watch(socket: str | None, node: str, after: int, fmt: str) -> None:
    events = connect(socket).watch(node, after)
    streams.follow(lambda: connect(socket), fmt, events, node, "enrolment", 600)
