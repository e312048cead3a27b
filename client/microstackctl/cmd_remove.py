"""`microstackctl remove`: take a node out of the cluster (on the control)."""

from __future__ import annotations

from typing import Any

import click

from microstackctl import render
from microstackctl.api import connect


def remove(socket: str | None, node: str, force: bool, fmt: str, drain: bool = False) -> None:
    moved: list[Any] = []
    if drain:
        from microstackctl import cmd_drain

        moved = cmd_drain.run_drain(socket, node, 600, fmt)
    response = connect(socket).remove(node, force)
    if fmt == "json":
        data: dict[str, Any] = {
            "node": render.node_dict(response.node),
            "message": response.message,
        }
        if drain:
            data["moved"] = [render.moved_dict(m) for m in moved]
        render.print_json(data)
    else:
        click.echo(response.message)
