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


def plain(
    status: pb.StatusResponse,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> str:
    """What status writes where the output is not a terminal: without rich (render.py)."""
    for name in ("COLUMNS", "FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    assert render._StatusView(status, time.time()).plain_lines(render._UNBOUNDED) is not None
    render.print_status(status)
    return capsys.readouterr().out


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
    assert plain(_status(), monkeypatch, capsys).split("\n\n")[-1].splitlines() == NOTES


DETAIL = "libvirt.LibvirtDriver, virt_type qemu (detected: cannot open /dev/kvm)"


def _with_detail() -> pb.StatusResponse:
    status = _status()
    status.nodes[0].services[2].detail = DETAIL
    return status


def test_what_a_service_runs_with_is_shown_between_the_table_and_the_notes() -> None:
    blocks = table(_with_detail()).rstrip("\n").split("\n\n")
    assert blocks[-2].splitlines() == [f"n1 ovsdb: {DETAIL}"]
    assert blocks[-1].splitlines() == NOTES


def test_the_plain_table_shows_the_details_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = plain(_with_detail(), monkeypatch, capsys).rstrip("\n").split("\n\n")
    assert blocks[-2:] == [f"n1 ovsdb: {DETAIL}", "\n".join(NOTES)]


def test_the_json_status_carries_each_services_detail() -> None:
    services = render.node_dict(_with_detail().nodes[0])["services"]
    assert [s["detail"] for s in services] == ["", "", DETAIL, ""]


def test_a_services_detail_crosses_the_wire_both_ways() -> None:
    from microstackd.model import ServiceRecord
    from microstackd.wire import convert

    record = ServiceRecord("nova-compute", "running", "", DETAIL)
    assert convert.services_from_pb(convert.services_to_pb([record])) == [record]


UNFINISHED = (
    "the secret rotation begun at 2026-12-01 23:50:00 UTC is unfinished: done service-users; "
    "left rabbitmq, database, control-files, admin, computes"
)


def _unfinished() -> pb.StatusResponse:
    status = _status()
    status.unfinished.add(
        operation="rotate-secrets", message=UNFINISHED, command="microstackctl rotate-secrets"
    )
    return status


def test_an_unfinished_rotation_is_a_line_of_its_own_with_its_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    head = "rotate-secrets UNFINISHED, finish it with `microstackctl rotate-secrets`: the"
    for out in (table(_unfinished()), plain(_unfinished(), monkeypatch, capsys)):
        lines = [" ".join(ln.split()) for ln in out.splitlines()]
        first = next(i for i, ln in enumerate(lines) if ln.startswith("rotate-secrets"))
        assert lines[first].startswith(head), out
        assert UNFINISHED in " ".join(lines[first : first + 3]), out
    assert render.status_dict(_unfinished())["unfinished"] == [
        {
            "operation": "rotate-secrets",
            "message": UNFINISHED,
            "command": "microstackctl rotate-secrets",
        }
    ]
    assert render.status_dict(_status())["unfinished"] == []
