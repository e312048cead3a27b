"""microstackctl: the operator's commands (init, join, status, watch, remove,
drain, undrain, reconfigure, rotate-secrets, add-node, tokens, launch, backup, restore),
each a call to the local microstackd's socket.

This module is the argument parsing, and only that: every command's work
is in ``cmd_NAME.py``, imported when the command runs. So ``--help``,
``--version``, ``CMD --help`` and a usage error load click and nothing
heavier — no grpc, protobuf or rich (tests/unit/test_cli_imports.py keeps
it so) — and each command loads what it uses.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from microstackctl.errors import CommandError

VERSION = "0.1.0"

FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="output format; json is stable for scripts",
)
PASSWORD_FILE = click.option(
    "--password-file", type=click.Path(), help="read the cluster password from a file"
)
PASSWORD_STDIN = click.option(
    "--password-stdin", is_flag=True, help="read the cluster password from stdin"
)
ADDRESS = click.option("--address", help="this node's IP address (default: from the host's routes)")


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


TIMEOUT = click.option(
    "--timeout",
    type=Whole(1, 86400),
    default=600,
    show_default=True,
    help="seconds to wait for an unreachable or not yet initialised control node",
)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print a command's ``CommandError`` as ``Error: MESSAGE`` on standard
    error and exit with its code (docs/cli.md, Exit codes)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CommandError as exc:
            click.echo(f"Error: {exc.message}", err=True)
            sys.exit(exc.exit_code)

    return wrapper


def _socket(ctx: click.Context) -> str | None:
    """The global ``--socket`` (each command's options go to its ``cmd_NAME``
    function by name: its parameters are the options declared above it)."""
    socket: str | None = ctx.obj["socket"]
    return socket


def help_width() -> int:
    """The width click would wrap help to: ``max(min(columns, 80) - 2, 50)``
    with ``shutil.get_terminal_size()``'s columns ($COLUMNS, else the
    terminal's, else 80), found without importing shutil — it loads bz2 and
    lzma, a third of what ``--help`` took beyond click itself."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
        columns = columns or 80
    return max(min(columns, 80) - 2, 50)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "terminal_width": help_width()}
)
@click.option(
    "--socket",
    envvar="MICROSTACK_SOCKET",
    default=None,
    help="microstackd's socket [env MICROSTACK_SOCKET; default /run/microstackd/microstackd.sock]",
)
@click.version_option(VERSION, prog_name="microstackctl")
@click.pass_context
def main(ctx: click.Context, socket: str | None) -> None:
    """Form and inspect a MicroStack cluster."""
    ctx.obj = {"socket": socket}


@main.command()
@click.option("--role", type=click.Choice(["control", "compute"]), help="this machine's role")
@PASSWORD_FILE
@PASSWORD_STDIN
@ADDRESS
@click.option("--control-address", help="the control node's address (compute role)")
@click.option("--yes", is_flag=True, help="set up clustering and accept defaults without asking")
@FORMAT
@click.pass_context
@handle_errors
def init(ctx: click.Context, **options: Any) -> None:
    """Set up this machine: create a cluster (control) or join one (compute).

    With no flags, asks the questions of the original `microstack init`.
    """
    from microstackctl import cmd_init

    cmd_init.init(_socket(ctx), **options)


@main.command()
@click.argument("control", required=False)
@PASSWORD_FILE
@PASSWORD_STDIN
@click.option("--token", help="a join token from `microstackctl add-node` (instead of a password)")
@ADDRESS
@TIMEOUT
@FORMAT
@click.pass_context
@handle_errors
def join(ctx: click.Context, **options: Any) -> None:
    """Join the cluster whose control node is at CONTROL[:PORT] (or the one a
    --token names)."""
    from microstackctl import cmd_join

    cmd_join.join(_socket(ctx), **options)


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
    from microstackctl import cmd_watch

    cmd_watch.watch(_socket(ctx), node, after, fmt)


@main.command()
@click.argument("node")
@click.option(
    "--force",
    is_flag=True,
    help="remove it even if it cannot be reached or still hosts instances (says what is left)",
)
@click.option("--drain", is_flag=True, help="drain it first (see `drain`), then remove it")
@FORMAT
@click.pass_context
@handle_errors
def remove(ctx: click.Context, node: str, force: bool, drain: bool, fmt: str) -> None:
    """Remove NODE from the cluster (on the control): refused while it hosts
    instances; stop its services, revoke its certificate, delete what the
    cloud holds for it (compute service, resource provider, Neutron agents)."""
    from microstackctl import cmd_remove

    cmd_remove.remove(_socket(ctx), node, force, fmt, drain=drain)


@main.command()
@click.argument("node")
@click.option(
    "--instance-timeout",
    type=click.IntRange(10, 86400),
    default=600,
    show_default=True,
    help="seconds each instance's move may take before it is aborted",
)
@FORMAT
@click.pass_context
@handle_errors
def drain(ctx: click.Context, node: str, instance_timeout: int, fmt: str) -> None:
    """Empty compute NODE (on the control): nothing new lands there, each
    instance moves to another compute (live; a stopped one is started,
    moved and stopped; evacuated when NODE is down); ends when it is empty."""
    from microstackctl import cmd_drain

    cmd_drain.drain(_socket(ctx), node, instance_timeout, fmt)


@main.command()
@click.argument("nodes", nargs=-1, metavar="[NODE]...")
@FORMAT
@click.pass_context
@handle_errors
def reconfigure(ctx: click.Context, nodes: tuple[str, ...], fmt: str) -> None:
    """Issue the compute configuration again from control.yaml and apply it
    to NODEs (default: every active compute), one at a time, restarting only
    the services whose files changed (on the control). A compute still on
    the shared OpenStack credentials gets its own."""
    from microstackctl import cmd_reconfigure

    cmd_reconfigure.reconfigure(_socket(ctx), nodes, fmt)


@main.command("rotate-secrets")
@FORMAT
@click.pass_context
@handle_errors
def rotate_secrets(ctx: click.Context, fmt: str) -> None:
    """New passwords for every OpenStack secret control.yaml generated
    (MariaDB, RabbitMQ, the Keystone service users, the admin), set where
    each is checked and in the files of its users, those services
    restarted, clouds.yaml rewritten (on the control). Interrupted, it
    carries on from where it stopped when run again."""
    from microstackctl import cmd_rotate_secrets

    cmd_rotate_secrets.rotate_secrets(_socket(ctx), fmt)


@main.command()
@click.argument("node")
@FORMAT
@click.pass_context
@handle_errors
def undrain(ctx: click.Context, node: str, fmt: str) -> None:
    """Let instances land on a drained compute NODE again (on the control)."""
    from microstackctl import cmd_drain

    cmd_drain.undrain(_socket(ctx), node, fmt)


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
@click.option("--no-wait", is_flag=True, help="return once ACTIVE, without waiting for sshd")
@click.option(
    "--ssh-timeout",
    type=click.IntRange(1, 3600),
    default=300,
    show_default=True,
    help="seconds to wait for sshd once the server is ACTIVE",
)
@FORMAT
@click.pass_context
@handle_errors
def launch(ctx: click.Context, **options: Any) -> None:
    """Boot IMAGE on the cloud (on the control), give it a floating IP from
    `public`, wait until its sshd answers, and print how to ssh to it (key
    ~/.ssh/id_microstack)."""
    from microstackctl import cmd_launch

    cmd_launch.launch(_socket(ctx), **options)


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
    from microstackctl import cmd_tokens

    cmd_tokens.add_node(_socket(ctx), name, ttl, fmt)


@main.group(invoke_without_command=True)
@FORMAT
@click.pass_context
@handle_errors
def tokens(ctx: click.Context, fmt: str) -> None:
    """List join tokens (on the control); `tokens revoke ID|NAME` revokes one."""
    if ctx.invoked_subcommand is not None:
        return
    from microstackctl import cmd_tokens

    cmd_tokens.list_tokens(_socket(ctx), fmt)


@tokens.command("revoke")
@click.argument("id_or_name")
@FORMAT
@click.pass_context
@handle_errors
def tokens_revoke(ctx: click.Context, id_or_name: str, fmt: str) -> None:
    """Revoke the valid join token with this id, or for this node name."""
    from microstackctl import cmd_tokens

    cmd_tokens.revoke(_socket(ctx), id_or_name, fmt)


@main.command()
@FORMAT
@click.pass_context
@handle_errors
def status(ctx: click.Context, fmt: str) -> None:
    """Show every node of the cluster: role, address, state, services."""
    from microstackctl import cmd_status

    cmd_status.status(_socket(ctx), fmt)


@main.group(invoke_without_command=True)
@FORMAT
@click.pass_context
@handle_errors
def ca(ctx: click.Context, fmt: str) -> None:
    """List the CAs the cluster trusts (two during a rotation); `ca rotate`
    replaces the CA (on the control)."""
    if ctx.invoked_subcommand is not None:
        return
    from microstackctl import cmd_ca

    cmd_ca.show(_socket(ctx), fmt)


@ca.command("rotate")
@FORMAT
@click.pass_context
@handle_errors
def ca_rotate(ctx: click.Context, fmt: str) -> None:
    """Replace the cluster CA without downtime: a new CA trusted beside the
    old, every member moved to it one at a time, then the old one retired
    (members that are down move when they are back)."""
    from microstackctl import cmd_ca

    cmd_ca.rotate(_socket(ctx), fmt)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--no-images", is_flag=True, help="leave Glance's images out of the archive")
@click.option("--list", "list_", is_flag=True, help="list FILE's content and check it (no daemon)")
@FORMAT
@click.pass_context
@handle_errors
def backup(ctx: click.Context, **options: Any) -> None:
    """Write a backup of this control to FILE (mode 0600: it holds the CA's
    key), or with --list show what FILE holds."""
    from microstackctl import cmd_backup

    cmd_backup.backup(_socket(ctx), **options)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@FORMAT
@click.pass_context
@handle_errors
def restore(ctx: click.Context, **options: Any) -> None:
    """Restore a control from its backup FILE on a fresh machine with the
    control's address; the computes reconnect by themselves."""
    from microstackctl import cmd_restore

    cmd_restore.restore(_socket(ctx), **options)


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
