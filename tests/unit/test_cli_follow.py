"""When the CLI re-attaches after losing its local daemon, and when it gives up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import streams
from microstackctl.errors import CommandError

DONE, RUNNING = pb.STEP_STATE_DONE, pb.STEP_STATE_RUNNING


def _event(seq: int, step: str, state: pb.StepState, final: bool = False) -> pb.Event:
    return pb.Event(node="node-1", seq=seq, step=step, state=state, message=step, final=final)


def _lost() -> CommandError:
    return CommandError("lost microstackd: is it running?", daemon_lost=True)


class FakeApi:
    def __init__(self, events: list[pb.Event]) -> None:
        self.events = events
        self.watched: list[tuple[str, int]] = []

    def watch(self, node: str, after_seq: int) -> Iterator[pb.Event]:
        self.watched.append((node, after_seq))
        yield from (e for e in self.events if e.seq > after_seq)


def _follow(monkeypatch: pytest.MonkeyPatch, first: Iterator[pb.Event], api: FakeApi) -> None:
    monkeypatch.setattr("microstackctl.streams.time.sleep", lambda s: None)
    streams.follow(lambda: api, "json", first, "node-1", "join", timeout=60)


CONTROL_EVENTS = [
    _event(1, "admit", RUNNING),
    _event(2, "admit", DONE),
    _event(3, "done", DONE, final=True),
]


def test_lost_right_after_bootstrap_reattaches_from_the_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The daemon went away after trust was established but before it relayed
    # any event of the control's: the enrolment exists, so wait and re-attach.
    def first() -> Iterator[pb.Event]:
        yield _event(0, "bootstrap", RUNNING)
        yield _event(0, "bootstrap", DONE)
        raise _lost()

    api = FakeApi(CONTROL_EVENTS)
    _follow(monkeypatch, first(), api)
    assert api.watched == [("node-1", 0)]
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 5 and '"final": true' in shown[-1]


def test_lost_mid_enrolment_reattaches_after_the_last_event_shown(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def first() -> Iterator[pb.Event]:
        yield _event(0, "bootstrap", DONE)
        yield CONTROL_EVENTS[0]
        raise _lost()

    api = FakeApi(CONTROL_EVENTS)
    _follow(monkeypatch, first(), api)
    assert api.watched == [("node-1", 1)]
    seqs = [line.split('"seq": ')[1].split(",")[0] for line in capsys.readouterr().out.splitlines()]
    assert seqs == ["0", "1", "2", "3"]


def test_lost_before_trust_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing exists on the control yet: running the command again is the fix.
    def first() -> Iterator[pb.Event]:
        yield _event(0, "bootstrap", RUNNING)
        raise _lost()

    api = FakeApi(CONTROL_EVENTS)
    with pytest.raises(CommandError):
        _follow(monkeypatch, first(), api)
    assert api.watched == []
