"""`microstackctl drain` and `undrain`: empty a compute, or open it again (on the control)."""

from __future__ import annotations

import click

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import render
from microstackctl.api import connect
from microstackctl.errors import CommandError


def run_drain(
    socket: str | None, node: str, instance_timeout: int, fmt: str
) -> list[pb.MovedInstance]:
    """Stream NODE's drain (shown unless ``fmt`` is json); the instances moved."""
    moved: list[pb.MovedInstance] | None = None
    with render.Progress(fmt) as progress:
        for response in connect(socket).drain(node, instance_timeout):
            if response.event.final:
                moved = list(response.moved)
            if fmt != "json":
                progress.show(response.event)
    if moved is None:
        raise CommandError(f"the drain of {node} ended before {node} was empty")
    return moved


def drain(socket: str | None, node: str, instance_timeout: int, fmt: str) -> None:
    moved = run_drain(socket, node, instance_timeout, fmt)
    if fmt == "json":
        render.print_json({"node": node, "moved": [render.moved_dict(m) for m in moved]})
        return
    for m in moved:
        click.echo(f"{m.name}  {m.how} to {m.host}  {m.status}")
    click.echo(f"{node} is drained: {len(moved)} instance(s) moved, none left")


def undrain(socket: str | None, node: str, fmt: str) -> None:
    response = connect(socket).undrain(node)
    if fmt == "json":
        render.print_json({"node": node, "message": response.message})
    else:
        click.echo(response.message)
