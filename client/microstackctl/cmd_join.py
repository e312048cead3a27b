"""`microstackctl join`: bootstrap trust with a control, then follow the enrolment."""

from __future__ import annotations

import sys

import click

from microstackctl import streams
from microstackctl.api import connect
from microstackctl.errors import usage
from microstackctl.netinfo import default_address
from microstackctl.prompts import read_password


def join(
    socket: str | None,
    control: str | None,
    password_file: str | None,
    password_stdin: bool,
    token: str | None,
    address: str | None,
    timeout: int,
    fmt: str,
) -> None:
    api = connect(socket)
    if token:
        if password_file or password_stdin:
            raise usage("use either --token or a password, not both")
        events = api.join(control or "", "", address or default_address(), token, timeout)
    else:
        if not control:
            raise usage("name the control node (CONTROL[:PORT]) or pass --token")
        password = read_password(password_file, password_stdin)
        if password is None:
            if not sys.stdin.isatty():
                raise usage("no cluster password: pass --password-file F or --password-stdin")
            password = click.prompt(
                "Please enter a cluster password", hide_input=True, prompt_suffix=" > "
            )
        events = api.join(control, password, address or default_address(), "", timeout)
    streams.follow(lambda: connect(socket), fmt, events, "", "join", timeout)
