"""`microstackctl launch`: boot a server on the cloud and say how to reach it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import click

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import render
from microstackctl.api import connect
from microstackctl.errors import CommandError

KEY_PATH = Path("~/.ssh/id_microstack")


def ensure_key(path: Path) -> str:
    """The public key of ``path`` (``~/.ssh/id_microstack``), made with
    ssh-keygen when missing."""
    path = path.expanduser()
    public = path.with_name(path.name + ".pub")
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "microstack",
                    "-f",
                    str(path),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", "") or str(exc)
            raise CommandError(f"cannot create {path} with ssh-keygen: {detail.strip()}") from exc
        click.echo(f"created the keypair {path}", err=True)
    try:
        return public.read_text().strip()
    except OSError as exc:
        raise CommandError(f"cannot read {public}: {exc.strerror or exc}") from exc


def ssh_command(key: Path, ip: str) -> str:
    return f"ssh -i {key} cirros@{ip}"


def launch(
    socket: str | None,
    image: str,
    name: str,
    flavor: str,
    zone: str,
    network: str,
    key_name: str,
    no_wait: bool,
    ssh_timeout: int,
    fmt: str,
) -> None:
    public_key = ensure_key(KEY_PATH)
    request = pb.LaunchRequest(
        image=image,
        name=name,
        flavor=flavor,
        availability_zone=zone,
        network=network,
        key_name=key_name,
        public_key=public_key,
        no_wait=no_wait,
        ssh_timeout_seconds=ssh_timeout,
    )
    result: pb.LaunchResult | None = None
    with render.Progress(fmt) as progress:
        for response in connect(socket).launch(request):
            if response.HasField("result"):
                result = response.result
            if fmt != "json":
                progress.show(response.event)
    if result is None:
        raise CommandError("the launch stream ended before the server was ready")
    ssh = ssh_command(KEY_PATH, result.floating_ip)
    if fmt == "json":
        render.print_json(render.launch_dict(result, ssh))
        return
    addresses = "; ".join(f"{a.network}={', '.join(a.addresses)}" for a in result.addresses)
    click.echo(f"server   {result.name} ({result.id})")
    click.echo(f"host     {result.host}")
    click.echo(f"status   {result.status}")
    click.echo(f"address  {addresses}")
    click.echo(f"floating {result.floating_ip}")
    if result.ssh_ready:
        click.echo(f"ssh      {ssh}")
    else:  # --no-wait: the line may not work yet
        click.echo(f"sshd     not waited for (--no-wait); once the guest has booted: {ssh}")
