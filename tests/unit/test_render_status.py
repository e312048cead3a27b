"""The status table's notes: why a service of a node is not running."""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import render


def table(status: pb.StatusResponse) -> str:
    buf = io.StringIO()
    render.print_status(status, Console(file=buf, width=200, highlight=False))
    return buf.getvalue()


def _status() -> pb.StatusResponse:
    status = pb.StatusResponse(local_node="ctl", local_role=pb.ROLE_CONTROL)
    status.cluster.id = "c1"
    node = status.nodes.add(name="n1", role=pb.ROLE_COMPUTE, state="active")
    node.services.add(
        name="nova-compute",
        state="stopped",
        message="nova-compute was stopped, not by microstackd; "
        "microstackd starts it again at 10:00:05 UTC",
    )
    node.services.add(name="ovs-agent", state="failed", message="ovs-agent exited with status 1\nx")
    node.services.add(name="ovsdb", state="running", message="started again by microstackd at …")
    node.services.add(name="quiet", state="stopped")
    return status


NOTES = [
    "n1 nova-compute: nova-compute was stopped, not by microstackd; "
    "microstackd starts it again at 10:00:05 UTC",
    "n1 ovs-agent: ovs-agent exited with status 1 …",
]


def test_a_stopped_or_failed_service_is_explained_below_the_table() -> None:
    out = table(_status())
    assert "1/4" in out
    assert out.split("\n\n")[-1].splitlines() == NOTES


def test_the_plain_table_for_a_pipe_explains_them_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Written without rich where the output is not a terminal (render.py).
    for name in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    status = _status()
    assert render._StatusView(status, time.time()).plain_lines(render._UNBOUNDED) is not None
    render.print_status(status)
    assert capsys.readouterr().out.split("\n\n")[-1].splitlines() == NOTES
