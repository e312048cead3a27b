"""`microstackctl reconfigure [NODE...]`: issue the compute configuration
again from control.yaml and apply it, one compute at a time (on the control)."""

from __future__ import annotations

import click

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import render
from microstackctl.api import connect
from microstackctl.errors import CommandError

APPLIED = "applied"


def reconfigure(socket: str | None, nodes: tuple[str, ...], fmt: str) -> None:
    outcomes: list[pb.NodeOutcome] | None = None
    with render.Progress(fmt) as progress:
        for response in connect(socket).reconfigure(list(nodes)):
            if response.event.final:
                outcomes = list(response.outcomes)
            elif fmt != "json":
                progress.show(response.event)
    if outcomes is None:
        raise CommandError("the reconfigure ended before every compute was done")
    if fmt == "json":
        render.print_json(
            {
                "nodes": [
                    {"node": o.node, "result": o.result, "message": o.message} for o in outcomes
                ]
            }
        )
    else:
        for o in outcomes:
            click.echo(f"{o.node}  {o.result}  {o.message}")
    left = [o for o in outcomes if o.result != APPLIED]
    if left:
        named = ", ".join(f"{o.node} ({o.result})" for o in left)
        raise CommandError(
            f"{len(outcomes) - len(left)}/{len(outcomes)} compute(s) reconfigured; not: {named}"
        )
