"""microstackctl: the operator's commands (init, join, status, watch, remove,
add-node, tokens, launch), each a call to the local microstackd's socket."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import render
from microstackctl.api import (
    EXIT_ERROR,
    EXIT_USAGE,
    Api,
    CommandError,
    socket_path,
)
from microstackctl.netinfo import default_address

FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="output format; json is stable for scripts",
)


class Whole(click.ParamType[int]):
    """A whole number in ASCII digits, ``low``..``high``: click's INT takes
    whatever ``int()`` takes (Arabic-Indic digits, spaces, underscores)."""

    name = "integer"

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if type(value) is int:
            number = value
        elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) < 19:
            number = int(value)
        else:
            self.fail(f"{value!r} is not a whole number (ASCII digits)", param, ctx)
        if not self.low <= number <= self.high:
            self.fail(f"{value} is not in the range {self.low}-{self.high}", param, ctx)
        return number


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _api(ctx: click.Context) -> Api:
    return Api(socket_path(ctx.obj["socket"]))


def read_password(password_file: Path | None, password_stdin: bool) -> str | None:
    if password_file and password_stdin:
        fail("use either --password-file or --password-stdin, not both", EXIT_USAGE)
    if password_file:
        try:
            text = password_file.read_text()
        except OSError as exc:
            fail(f"cannot read the password file {password_file}: {exc.strerror}", EXIT_USAGE)
    elif password_stdin:
        text = sys.stdin.read()
    else:
        return None
    password = text.rstrip("\r\n")
    if not password:
        fail("the cluster password is empty", EXIT_USAGE)
    return password


def prompt_password() -> str:
    while True:
        first: str = click.prompt(
            "Please enter a cluster password", hide_input=True, prompt_suffix=" > "
        )
        second: str = click.prompt("Please re-enter password", hide_input=True, prompt_suffix=" > ")
        if first == second and first:
            return first
        click.echo("The passwords do not match; please try again.", err=True)


def ask(text: str, default: str | None = None, choices: tuple[str, ...] = ()) -> str:
    shown = f"{text} [default={default}]" if default is not None else text
    while True:
        answer: str = click.prompt(
            shown,
            default=default if default is not None else "",
            show_default=False,
            prompt_suffix=" > ",
        ).strip()
        if not choices or answer in choices:
            if answer:
                return answer
        click.echo(f"Please answer {' or '.join(choices) or 'with a value'}.", err=True)


#: The joining daemon's own step before the control's enrolment (docs/api.md, Streams).
BOOTSTRAP_STEP = "bootstrap"


def stream(fmt: str, events: Iterator[pb.Event], what: str) -> None:
    """Show a stream of events; exit non-zero unless it ended done."""
    with render.Progress(fmt) as progress:
        last = progress.run(events)
    finish(last, what)


def finish(last: pb.Event | None, what: str) -> None:
    if last is None or not last.final:
        fail(f"the {what} stream ended before the {what} finished; run the command again to resume")
    if last.state != pb.STEP_STATE_DONE:
        fail(f"{what} failed at step {last.step}: {last.message}")


def follow(
    ctx: click.Context, fmt: str, first: Iterator[pb.Event], node: str, what: str, timeout: float
) -> None:
    """Show ``first``; if the local daemon goes away mid-stream, wait for it
    and re-attach with Watch from the last event shown: nothing is shown twice.

    Re-attaching makes sense once the enrolment exists on the control: after
    any event of the control's (seq > 0) or once bootstrap is done (the node
    is trusted and its daemon resumes the enrolment when it restarts), even
    if the daemon went away before relaying the control's first event."""
    last_seq = 0
    lost_since = 0.0
    trusted = False

    def reattach() -> Iterator[pb.Event]:
        while True:
            try:
                yield from _api(ctx).watch(node, last_seq)
                return
            except CommandError as exc:
                if not exc.daemon_lost or time.monotonic() - lost_since > timeout:
                    raise
            time.sleep(1)

    with render.Progress(fmt) as progress:
        events = first
        while True:
            try:
                for event in events:
                    lost_since = 0.0
                    if event.seq and event.seq <= last_seq:
                        continue
                    last_seq = max(last_seq, event.seq)
                    trusted = (
                        trusted
                        or bool(event.seq)
                        or (event.step == BOOTSTRAP_STEP and event.state == pb.STEP_STATE_DONE)
                    )
                    progress.show(event)
                    if event.final:
                        break
                break
            except CommandError as exc:
                if not exc.daemon_lost or not trusted:
                    raise
                lost_since = lost_since or time.monotonic()
                if fmt != "json":
                    progress.console.print(
                        f"[yellow]… lost the local microstackd; re-attaching ({exc.message})[/]"
                    )
                time.sleep(1)
                events = reattach()
        last = progress.last
    finish(last, what)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CommandError as exc:
            fail(exc.message, exc.exit_code)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--socket",
    envvar="MICROSTACK_SOCKET",
    default=None,
    help="microstackd's socket [env MICROSTACK_SOCKET; default /run/microstackd/microstackd.sock]",
)
@click.version_option("0.1.0", prog_name="microstackctl")
@click.pass_context
def main(ctx: click.Context, socket: str | None) -> None:
    """Form and inspect a MicroStack cluster."""
    ctx.obj = {"socket": socket}


@main.command()
@click.option("--role", type=click.Choice(["control", "compute"]), help="this machine's role")
@click.option(
    "--password-file", type=click.Path(path_type=Path), help="read the cluster password from a file"
)
@click.option("--password-stdin", is_flag=True, help="read the cluster password from stdin")
@click.option("--address", help="this node's IP address (default: from the host's routes)")
@click.option("--control-address", help="the control node's address (compute role)")
@click.option("--yes", is_flag=True, help="set up clustering and accept defaults without asking")
@FORMAT
@click.pass_context
@handle_errors
def init(
    ctx: click.Context,
    role: str | None,
    password_file: Path | None,
    password_stdin: bool,
    address: str | None,
    control_address: str | None,
    yes: bool,
    fmt: str,
) -> None:
    """Set up this machine: create a cluster (control) or join one (compute).

    With no flags, asks the questions of the original `microstack init`.
    """
    password = read_password(password_file, password_stdin)
    interactive = role is None and not yes
    discovered = default_address()
    if interactive:
        clustering = ask("Do you want to setup clustering? (yes/no)", "no", ("yes", "no"))
        if clustering == "no":
            click.echo("Setting up this machine as a standalone control node.")
            import secrets  # only here: keeps it off every other command's start-up

            role, password = "control", password or secrets.token_urlsafe(24)
            address = address or discovered
        else:
            role = ask(
                "What is this machines' role? (control/compute)", None, ("control", "compute")
            )
    role = role or "control"
    if password is None:
        if not interactive and not sys.stdin.isatty():
            fail("no cluster password: pass --password-file F or --password-stdin", EXIT_USAGE)
        password = prompt_password()
    if role == "control":
        if address is None:
            address = (
                ask("Please enter the ip address of the control node", discovered)
                if interactive
                else discovered
            )
        stream(fmt, _api(ctx).init(password, address), "init")
        return
    if control_address is None:
        if not interactive:
            fail("the compute role needs --control-address", EXIT_USAGE)
        control_address = ask("Please enter the ip address of the control node", discovered)
    if address is None:
        address = (
            ask("Please enter the ip address of this node", discovered)
            if interactive
            else discovered
        )
    follow(ctx, fmt, _api(ctx).join(control_address, password, address), "", "join", 600)


TIMEOUT = click.option(
    "--timeout",
    type=Whole(1, 86400),
    default=600,
    show_default=True,
    help="seconds to wait for an unreachable or not yet initialised control node",
)


@main.command()
@click.argument("control", required=False)
@click.option(
    "--password-file", type=click.Path(path_type=Path), help="read the cluster password from a file"
)
@click.option("--password-stdin", is_flag=True, help="read the cluster password from stdin")
@click.option("--token", help="a join token from `microstackctl add-node` (instead of a password)")
@click.option("--address", help="this node's IP address (default: from the host's routes)")
@TIMEOUT
@FORMAT
@click.pass_context
@handle_errors
def join(
    ctx: click.Context,
    control: str | None,
    password_file: Path | None,
    password_stdin: bool,
    token: str | None,
    address: str | None,
    timeout: int,
    fmt: str,
) -> None:
    """Join the cluster whose control node is at CONTROL[:PORT] (or the one a
    --token names)."""
    api = _api(ctx)
    if token:
        if password_file or password_stdin:
            fail("use either --token or a password, not both", EXIT_USAGE)
        events = api.join(control or "", "", address or default_address(), token, timeout)
    else:
        if not control:
            fail("name the control node (CONTROL[:PORT]) or pass --token", EXIT_USAGE)
        password = read_password(password_file, password_stdin)
        if password is None:
            if not sys.stdin.isatty():
                fail("no cluster password: pass --password-file F or --password-stdin", EXIT_USAGE)
            password = click.prompt(
                "Please enter a cluster password", hide_input=True, prompt_suffix=" > "
            )
        events = api.join(control, password, address or default_address(), "", timeout)
    follow(ctx, fmt, events, "", "join", timeout)


@main.command()
@click.argument("node", required=False, default="")
@click.option(
    "--after", type=Whole(0, 2**62), default=0, help="replay events after this sequence number"
)
@FORMAT
@click.pass_context
@handle_errors
def watch(ctx: click.Context, node: str, after: int, fmt: str) -> None:
    """Follow NODE's enrolment (this node by default): replay, then live."""
    follow(ctx, fmt, _api(ctx).watch(node, after), node, "enrolment", 600)


@main.command()
@click.argument("node")
@click.option("--force", is_flag=True, help="remove it even if its services cannot be stopped")
@FORMAT
@click.pass_context
@handle_errors
def remove(ctx: click.Context, node: str, force: bool, fmt: str) -> None:
    """Remove NODE from the cluster (on the control): stop its services,
    revoke its certificate."""
    response = _api(ctx).remove(node, force)
    if fmt == "json":
        render.print_json({"node": render.node_dict(response.node), "message": response.message})
    else:
        click.echo(response.message)


KEY_PATH = Path("~/.ssh/id_microstack")


def ensure_key(path: Path) -> str:
    """The public key of ``path`` (``~/.ssh/id_microstack``), made with
    ssh-keygen when missing."""
    import subprocess

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
            fail(f"cannot create {path} with ssh-keygen: {detail.strip()}")
        click.echo(f"created the keypair {path}", err=True)
    try:
        return public.read_text().strip()
    except OSError as exc:
        fail(f"cannot read {public}: {exc.strerror or exc}")


def ssh_command(key: Path, ip: str) -> str:
    return f"ssh -i {key} cirros@{ip}"


@main.command()
@click.argument("image")
@click.option("--name", default="", help="the server's name")
@click.option("--flavor", default="", help="flavor (default m1.tiny, else the smallest)")
@click.option(
    "--availability-zone", "zone", default="", help="ZONE or ZONE:HOST (e.g. nova:node-1)"
)
@click.option(
    "--network", default="", help="network (default test, else private; created if missing)"
)
@click.option("--key-name", default="", help="Nova keypair name (default microstack)")
@FORMAT
@click.pass_context
@handle_errors
def launch(
    ctx: click.Context,
    image: str,
    name: str,
    flavor: str,
    zone: str,
    network: str,
    key_name: str,
    fmt: str,
) -> None:
    """Boot IMAGE on the cloud (on the control), give it a floating IP from
    `public` and print how to ssh to it (key ~/.ssh/id_microstack)."""
    public_key = ensure_key(KEY_PATH)
    request = pb.LaunchRequest(
        image=image,
        name=name,
        flavor=flavor,
        availability_zone=zone,
        network=network,
        key_name=key_name,
        public_key=public_key,
    )
    result: pb.LaunchResult | None = None
    with render.Progress(fmt) as progress:
        for response in _api(ctx).launch(request):
            if response.HasField("result"):
                result = response.result
            if fmt != "json":
                progress.show(response.event)
    if result is None:
        fail("the launch stream ended before the server was ready")
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
    click.echo(f"ssh      {ssh}")


@main.command("add-node")
@click.argument("name")
@click.option(
    "--ttl", default="1h", show_default=True, help="how long the token is valid (s, m, h, d)"
)
@FORMAT
@click.pass_context
@handle_errors
def add_node(ctx: click.Context, name: str, ttl: str, fmt: str) -> None:
    """Print a one-time join token for a node named NAME (on the control)."""
    seconds = parse_ttl(ttl)
    response = _api(ctx).create_token(name, seconds)
    expires = render.iso(response.expires)
    if fmt == "json":
        render.print_json({"token": response.token, "expires": expires, "id": response.id})
        return
    click.echo(response.token)
    click.echo(
        f"One-time token for node {name!r}, valid until {expires}. On that node run:\n"
        f"  microstackctl join --token <the token above>",
        err=True,
    )


@main.group(invoke_without_command=True)
@FORMAT
@click.pass_context
@handle_errors
def tokens(ctx: click.Context, fmt: str) -> None:
    """List join tokens (on the control); `tokens revoke ID|NAME` revokes one."""
    if ctx.invoked_subcommand is not None:
        return
    response = _api(ctx).list_tokens()
    if fmt == "json":
        render.print_json({"tokens": [render.token_dict(t) for t in response.tokens]})
    else:
        render.print_tokens(response.tokens)


@tokens.command("revoke")
@click.argument("id_or_name")
@FORMAT
@click.pass_context
@handle_errors
def tokens_revoke(ctx: click.Context, id_or_name: str, fmt: str) -> None:
    """Revoke the valid join token with this id, or for this node name."""
    response = _api(ctx).revoke_token(id_or_name)
    if fmt == "json":
        render.print_json({"token": render.token_dict(response.token)})
    else:
        click.echo(f"token {response.token.id} for {response.token.name} revoked")


def parse_ttl(text: str) -> int:
    import re

    match = re.fullmatch(r"\s*([0-9]{1,9})\s*([smhd]?)\s*", text, re.ASCII)
    if not match:
        fail(f"--ttl {text!r}: use a number with s, m, h or d (e.g. 1h)", EXIT_USAGE)
    seconds = int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if not 0 < seconds <= 30 * 86400:
        fail(f"--ttl {text!r}: must be between 1 s and 30 days", EXIT_USAGE)
    return seconds


@main.command()
@FORMAT
@click.pass_context
@handle_errors
def status(ctx: click.Context, fmt: str) -> None:
    """Show every node of the cluster: role, address, state, services."""
    response = _api(ctx).status()
    if fmt == "json":
        render.print_json(render.status_dict(response))
    else:
        render.print_status(response)


def run() -> NoReturn:
    """The console script: run the command, flush, and leave at once.

    Skipping the interpreter's teardown (grpc's and rich's module clean-up)
    saves ~20 ms on every command (docs/performance.md); nothing is left to
    flush or close by then.
    """
    code = 0
    try:
        main()
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            code = 1
        else:
            code = exc.code or 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
