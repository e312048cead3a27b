"""`microstackctl init`: create a cluster (control), or join one (compute)."""

from __future__ import annotations

import sys

import click

from microstackctl import streams
from microstackctl.api import connect
from microstackctl.errors import usage
from microstackctl.netinfo import default_address
from microstackctl.prompts import ask, prompt_password, read_password


def init(
    socket: str | None,
    role: str | None,
    password_file: str | None,
    password_stdin: bool,
    address: str | None,
    control_address: str | None,
    yes: bool,
    fmt: str,
) -> None:
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
            raise usage("no cluster password: pass --password-file F or --password-stdin")
        password = prompt_password()
    if role == "control":
        if address is None:
            address = (
                ask("Please enter the ip address of the control node", discovered)
                if interactive
                else discovered
            )
        streams.stream(fmt, connect(socket).init(password, address), "init")
        return
    if control_address is None:
        if not interactive:
            raise usage("the compute role needs --control-address")
        control_address = ask("Please enter the ip address of the control node", discovered)
    if address is None:
        address = (
            ask("Please enter the ip address of this node", discovered)
            if interactive
            else discovered
        )
    events = connect(socket).join(control_address, password, address)
    streams.follow(lambda: connect(socket), fmt, events, "", "join", 600)
