"""microstackctl: init, join and status, talking to the local microstackd."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from microstack_api.v1 import cluster_pb2 as pb
from microstackctl import render
from microstackctl.api import EXIT_ERROR, EXIT_USAGE, Api, CommandError, socket_path
from microstackctl.netinfo import default_address

FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="output format; json is stable for scripts",
)


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


def stream(fmt: str, events: Iterator[pb.Event], what: str) -> None:
    """Show a stream of events; exit non-zero unless it ended done."""
    with render.Progress(fmt) as progress:
        last = progress.run(events)
    if last is None or not last.final:
        fail(f"the {what} stream ended before the {what} finished; run the command again to resume")
    if last.state != pb.STEP_STATE_DONE:
        fail(f"{what} failed at step {last.step}: {last.message}")


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
    stream(fmt, _api(ctx).join(control_address, password, address), "join")


@main.command()
@click.argument("control")
@click.option(
    "--password-file", type=click.Path(path_type=Path), help="read the cluster password from a file"
)
@click.option("--password-stdin", is_flag=True, help="read the cluster password from stdin")
@click.option("--address", help="this node's IP address (default: from the host's routes)")
@FORMAT
@click.pass_context
@handle_errors
def join(
    ctx: click.Context,
    control: str,
    password_file: Path | None,
    password_stdin: bool,
    address: str | None,
    fmt: str,
) -> None:
    """Join the cluster whose control node is at CONTROL[:PORT]."""
    password = read_password(password_file, password_stdin)
    if password is None:
        if not sys.stdin.isatty():
            fail("no cluster password: pass --password-file F or --password-stdin", EXIT_USAGE)
        password = click.prompt(
            "Please enter a cluster password", hide_input=True, prompt_suffix=" > "
        )
    stream(fmt, _api(ctx).join(control, password, address or default_address()), "join")


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


if __name__ == "__main__":
    main()
