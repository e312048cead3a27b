"""`microstackctl status`: every node of the cluster."""

from __future__ import annotations

from microstackctl import render
from microstackctl.api import connect


def status(socket: str | None, fmt: str) -> None:
    response = connect(socket).status()
    if fmt == "json":
        render.print_json(render.status_dict(response))
    else:
        render.print_status(response)
