"""The CLI's own plain-text output is what rich would have written.

Where standard output is not a terminal, render.py writes status tables,
token tables and progress lines itself instead of through rich (speed:
docs/performance.md). These tests draw the same data both ways — the plain
path, and rich to a non-terminal console of the same width — and require
the same bytes; and check that whatever rich would have to fold, wrap or
clean goes to rich.
"""

from __future__ import annotations

import io
import json
import random
from datetime import UTC
from typing import Any, cast

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import render

NOW = 1_764_600_000.0
MESSAGES = [
    "",
    "boom",
    "line one\nline two",
    "[bold]not markup[/bold] and [/]",
    "a :smile: is not an emoji here",
    "  padded  ",
    "x" * 300,
    "tab\there",
    "bell\x07 and cr\r",
    "é and … and 漢字",
]
STATES = ["active", "failed", "enrolling", "pending", "removed", "unreachable", "odd", ""]


@pytest.fixture(autouse=True)
def plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("microstackctl.render.time.time", lambda: NOW)


def _ts(seconds: int) -> Timestamp:
    ts = Timestamp()
    ts.FromSeconds(seconds)
    return ts


def random_status(rnd: random.Random, plain_only: bool = False) -> pb.StatusResponse:
    messages = MESSAGES[:2] + MESSAGES[5:7] if plain_only else MESSAGES
    status = pb.StatusResponse(local_node="n0", local_role=pb.ROLE_CONTROL)
    c = status.cluster
    c.id = f"{rnd.getrandbits(64):016x}"
    c.control_name, c.control_address = "n0", "10.0.0.1"
    c.bootstrap_port, c.cluster_port = 10002, 10003
    c.ca_fingerprint = f"{rnd.getrandbits(256):064x}"
    if rnd.random() < 0.9:
        c.ca_expires.CopyFrom(_ts(int(NOW) + rnd.randint(0, 10**9)))
    with_nova = rnd.random() < 0.4
    for i in range(rnd.randint(0, 25)):
        n = status.nodes.add(
            name=f"n{i}" + "x" * rnd.randint(0, 20),
            role=rnd.choice([pb.ROLE_UNSPECIFIED, pb.ROLE_CONTROL, pb.ROLE_COMPUTE]),
            address=f"10.0.{i}.{rnd.randint(1, 254)}",
            state=rnd.choice(STATES[:7] if plain_only else STATES),
            message=rnd.choice(messages),
        )
        if rnd.random() < 0.8:
            ago = rnd.choice([0, 5, 59, 60, 61, 3599, 3600, 86400 * 3, -5])
            n.last_seen.CopyFrom(_ts(int(NOW) - ago))
        if rnd.random() < 0.8:
            n.cert_expires.CopyFrom(_ts(int(NOW) + rnd.randint(-(10**8), 10**9)))
        for j in range(rnd.randint(0, 3)):
            n.services.add(
                name=f"svc{j}",
                state=rnd.choice(["running", "failed", "starting", "stopped"]),
                message=rnd.choice(messages),
            )
        if with_nova and rnd.random() < 0.7:
            n.nova.CopyFrom(
                pb.NovaHost(
                    compute_service=rnd.choice(["up", "down (disabled)", ""]),
                    hypervisor=rnd.choice(["up", ""]),
                    running_instances=rnd.randint(0, 5),
                )
            )
    return status


def rich_status(status: pb.StatusResponse, width: int = render._UNBOUNDED) -> str:
    out = io.StringIO()
    render.print_status(status, Console(file=out, highlight=False, width=width))
    return out.getvalue()


def test_the_plain_status_table_is_what_rich_writes(capsys: pytest.CaptureFixture[str]) -> None:
    rnd = random.Random(1)
    plain_drawn = 0
    for _ in range(120):
        status = random_status(rnd)
        render.print_status(status)
        assert capsys.readouterr().out == rich_status(status)
        plain_drawn += render._StatusView(status, NOW).plain_lines(render._UNBOUNDED) is not None
    assert plain_drawn > 15  # the plain path was taken, not only rich's


def test_a_table_that_does_not_fit_columns_is_left_to_rich(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rnd = random.Random(2)
    for columns in (20, 60, 100, 200):
        monkeypatch.setenv("COLUMNS", str(columns))
        for _ in range(12):
            status = random_status(rnd, plain_only=True)
            render.print_status(status)
            assert capsys.readouterr().out == rich_status(status, columns)


def test_status_of_a_node_in_no_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    status = pb.StatusResponse(local_node="lonely")
    render.print_status(status)
    out = capsys.readouterr().out
    assert out == rich_status(status)
    assert out.startswith("lonely: not part of a cluster.")


def test_a_large_status_is_drawn_plain(capsys: pytest.CaptureFixture[str]) -> None:
    status = random_status(random.Random(3), plain_only=True)
    for i in range(1001):
        status.nodes.add(name=f"node-{i:04d}", role=pb.ROLE_COMPUTE, state="active")
    assert render._StatusView(status, NOW).plain_lines(render._UNBOUNDED) is not None
    render.print_status(status)
    assert capsys.readouterr().out == rich_status(status)


def test_the_plain_token_table_is_what_rich_writes(capsys: pytest.CaptureFixture[str]) -> None:
    def rich_tokens(tokens: list[pb.TokenInfo]) -> str:
        out = io.StringIO()
        render.print_tokens(tokens, Console(file=out, highlight=False, width=render._UNBOUNDED))
        return out.getvalue()

    rnd = random.Random(4)
    for count in (0, 1, 5):
        tokens = [
            pb.TokenInfo(
                id=f"{rnd.getrandbits(32):08x}",
                name=rnd.choice(["n1", "node-long-name", "é"]),
                state=rnd.choice(["valid", "used", "expired", "revoked"]),
                created=_ts(int(NOW)),
                expires=_ts(int(NOW) + 3600) if rnd.random() < 0.8 else Timestamp(),
            )
            for _ in range(count)
        ]
        render.print_tokens(tokens)
        assert capsys.readouterr().out == rich_tokens(tokens)


def _events(rnd: random.Random) -> list[pb.Event]:
    steps = ["bootstrap", "admit", "configure-node", "a-step-name-longer-than-18", ""]
    return [
        pb.Event(
            node="n1",
            seq=i,
            step=rnd.choice(steps),
            state=cast(pb.StepState, rnd.randint(0, 7)),  # 7: a state this CLI does not know
            message=rnd.choice(MESSAGES),
        )
        for i in range(300)
    ]


def test_plain_progress_lines_are_what_rich_writes(capsys: pytest.CaptureFixture[str]) -> None:
    for event in _events(random.Random(5)):
        progress = render.Progress("table")
        assert progress.plain
        progress.show(event)
        out = io.StringIO()
        render.Progress("table", Console(file=out, highlight=False)).show(event)
        assert capsys.readouterr().out == out.getvalue(), event


def test_a_message_is_shown_as_sent_not_as_markup(capsys: pytest.CaptureFixture[str]) -> None:
    event = pb.Event(step="admit", state=pb.STEP_STATE_FAILED, message="[/] [red]x[/red] :smile:")
    out = io.StringIO()
    render.Progress("table", Console(file=out, highlight=False)).show(event)
    assert out.getvalue() == "✗ admit              [/] [red]x[/red] :smile:\n"


def test_json_progress_is_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    progress = render.Progress("json")
    progress.show(pb.Event(node="n1", seq=3, step="admit", state=pb.STEP_STATE_DONE, final=True))
    line = json.loads(capsys.readouterr().out)
    assert line["state"] == "done" and line["final"] is True and line["time"] is None


class _File(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [False, True])
@pytest.mark.parametrize("compatible", [None, "", "0", "1", "2"])
@pytest.mark.parametrize("force_color", [None, "", "1", "0"])
def test_is_terminal_decides_as_rich_does(
    tty: bool, compatible: str | None, force_color: str | None
) -> None:
    environ = {"TERM": "xterm"}
    if compatible is not None:
        environ["TTY_COMPATIBLE"] = compatible
    if force_color is not None:
        environ["FORCE_COLOR"] = force_color
    file = _File(tty)
    expected = Console(file=file, _environ=environ).is_terminal
    assert render.is_terminal(file, environ) is expected


@pytest.mark.parametrize(
    "seconds", [1, 59, 86399, 951782400, 1_764_600_000, 4_102_444_800, -1, -62135596800]
)
@pytest.mark.parametrize("nanos", [0, 1, 999_999_999])
def test_iso_is_what_protobuf_and_datetime_give(seconds: int, nanos: int) -> None:
    ts = Timestamp(seconds=seconds, nanos=nanos)
    assert render.iso(ts) == ts.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")


def test_iso_of_an_unset_time_is_none() -> None:
    assert render.iso(Timestamp()) is None


def _random_json(rnd: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "bool", "none", "float"] + (["list", "dict"] * 2 if depth < 4 else [])
    kind = rnd.choice(kinds)
    if kind == "str":
        return rnd.choice(["", "plain", 'quote " and \\ back', "é…漢字\n\t\x00", "\u2028"])
    if kind == "int":
        return rnd.choice([0, -1, 7, 2**70])
    if kind == "bool":
        return rnd.random() < 0.5
    if kind == "none":
        return None
    if kind == "float":
        return rnd.choice([0.5, 1e300, float("inf"), -0.0])
    if kind == "list":
        return [_random_json(rnd, depth + 1) for _ in range(rnd.randint(0, 4))]
    return {f"k{i}": _random_json(rnd, depth + 1) for i in range(rnd.randint(0, 4))}


def test_to_json_is_json_dumps_with_indent_2() -> None:
    rnd = random.Random(6)
    for _ in range(2000):
        data = _random_json(rnd)
        assert render.to_json(data) == json.dumps(data, indent=2)
    status = render.status_dict(random_status(random.Random(7)))
    assert render.to_json(status) == json.dumps(status, indent=2)
    odd = {1: "int key", "t": (1, 2)}  # what the json module alone knows how to write
    assert render.to_json(odd) == json.dumps(odd, indent=2)
    assert render.to_json({"a": odd}) == json.dumps({"a": odd}, indent=2)


def test_every_cluster_label_stands_apart_from_its_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = random_status(random.Random(4), plain_only=True)
    status.bootstrap_fingerprint = "ab" * 32
    render.print_status(status)
    head = capsys.readouterr().out.split("\n\n")[0].splitlines()
    assert [line.split("  ")[0] for line in head] == ["cluster", "control", "CA", "bootstrap"]
    # The values start in one column, whatever the label.
    assert len({len(line) - len(line[len(line.split("  ")[0]) :].lstrip()) for line in head}) == 1
