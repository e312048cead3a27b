"""Asking the operator: the cluster password and the questions of `init`."""

from __future__ import annotations

import sys

import click

from microstackctl.errors import usage


def read_password(password_file: str | None, password_stdin: bool) -> str | None:
    """The password from ``--password-file`` or ``--password-stdin``, or None
    when neither was given; trailing newlines dropped."""
    if password_file and password_stdin:
        raise usage("use either --password-file or --password-stdin, not both")
    if password_file:
        try:
            with open(password_file) as file:
                text = file.read()
        except OSError as exc:
            raise usage(f"cannot read the password file {password_file}: {exc.strerror}") from exc
    elif password_stdin:
        text = sys.stdin.read()
    else:
        return None
    password = text.rstrip("\r\n")
    if not password:
        raise usage("the cluster password is empty")
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
