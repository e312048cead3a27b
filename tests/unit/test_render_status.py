"""The status table's notes: why a service of a node is not running."""

from __future__ import annotations

import io

from rich.console import Console

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import render


def table(status: pb.StatusResponse) -> str:
    buf = io.StringIO()
    render.print_status(status, Console(file=buf, width=200, highlight=False))
    return buf.getvalue()


def test_a_stopped_or_failed_service_is_explained_below_the_table() -> None:
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
    out = table(status)
    assert "1/4" in out
    notes = out.split("\n\n")[-1].splitlines()
    assert notes == [
        "n1 nova-compute: nova-compute was stopped, not by microstackd; "
        "microstackd starts it again at 10:00:05 UTC",
        "n1 ovs-agent: ovs-agent exited with status 1 …",
    ]
