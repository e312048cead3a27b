"""`microstackctl remove`: take a node out of the cluster (on the control)."""

from __future__ import annotations

import click

from microstackctl import render
from microstackctl.api import connect


def remove(socket: str | None, node: str, force: bool, fmt: str) -> None:
    response = connect(socket).remove(node, force)
    if fmt == "json":
        render.print_json({"node": render.node_dict(response.node), "message": response.message})
    else:
        click.echo(response.message)
