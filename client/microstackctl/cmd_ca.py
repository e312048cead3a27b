"""`microstackctl ca rotate`: replace the cluster CA (on the control)."""

from __future__ import annotations

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import render
from microstackctl.api import connect
from microstackctl.errors import CommandError


def show(socket: str | None, fmt: str) -> None:
    status = connect(socket).status()
    if not status.HasField("cluster"):
        raise CommandError(f"{status.local_node} is not part of a cluster")
    cas = [
        {"fingerprint": a.fingerprint, "expires": render.iso(a.expires), "state": a.state}
        for a in status.cluster.cas
    ]
    if fmt == "json":
        render.print_json({"cas": cas})
        return
    for a in cas:
        print(f"{a['state']:<9} {a['fingerprint']}  expires {a['expires']}")


def rotate(socket: str | None, fmt: str) -> None:
    api = connect(socket)
    status = api.status()
    if not status.HasField("cluster"):
        raise CommandError(f"{status.local_node} is not part of a cluster")
    last: pb.Event | None = None
    with render.Progress(fmt) as progress:
        for event in api.rotate_ca(status.cluster.id):
            last = event
            progress.show(event)
    if last is None or not last.final:
        raise CommandError(
            "the CA rotation's stream ended early: it goes on on the control; run "
            "`microstackctl ca rotate` again to follow it"
        )
