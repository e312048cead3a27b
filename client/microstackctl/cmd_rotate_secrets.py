"""`microstackctl rotate-secrets`: new passwords for the control plane's
generated OpenStack secrets, streamed step by step (on the control)."""

from __future__ import annotations

import click

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import render
from microstackctl.api import connect
from microstackctl.errors import CommandError

DONE = "done"


def rotate_secrets(socket: str | None, fmt: str) -> None:
    steps: list[pb.RotationStep] | None = None
    with render.Progress(fmt) as progress:
        for response in connect(socket).rotate_secrets():
            if response.event.final:
                steps = list(response.steps)
            elif fmt != "json":
                progress.show(response.event)
    if steps is None:
        raise CommandError(
            "the rotation ended before its last step; `microstackctl rotate-secrets` again "
            "carries on with the secrets it recorded"
        )
    if fmt == "json":
        render.print_json(
            {"steps": [{"step": s.step, "result": s.result, "message": s.message} for s in steps]}
        )
    else:
        for s in steps:
            click.echo(f"{s.step}  {s.result}  {s.message}")
    left = [s for s in steps if s.result != DONE]
    if left:
        raise CommandError(
            f"{len(steps) - len(left)}/{len(steps)} step(s) done; stopped at {left[0].step}: "
            "`microstackctl rotate-secrets` again carries on from there"
        )
