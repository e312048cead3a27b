"""`microstackctl add-node`, `tokens`, `tokens revoke`: join tokens (on the control)."""

from __future__ import annotations

import re

import click

from microstackctl import render
from microstackctl.api import connect
from microstackctl.errors import usage


def parse_ttl(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9]{1,9})\s*([smhd]?)\s*", text, re.ASCII)
    if not match:
        raise usage(f"--ttl {text!r}: use a number with s, m, h or d (e.g. 1h)")
    seconds = int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if not 0 < seconds <= 30 * 86400:
        raise usage(f"--ttl {text!r}: must be between 1 s and 30 days")
    return seconds


def add_node(socket: str | None, name: str, ttl: str, fmt: str) -> None:
    seconds = parse_ttl(ttl)
    response = connect(socket).create_token(name, seconds)
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


def list_tokens(socket: str | None, fmt: str) -> None:
    response = connect(socket).list_tokens()
    if fmt == "json":
        render.print_json({"tokens": [render.token_dict(t) for t in response.tokens]})
    else:
        render.print_tokens(response.tokens)


def revoke(socket: str | None, id_or_name: str, fmt: str) -> None:
    response = connect(socket).revoke_token(id_or_name)
    if fmt == "json":
        render.print_json({"token": render.token_dict(response.token)})
    else:
        click.echo(f"token {response.token.id} for {response.token.name} revoked")
