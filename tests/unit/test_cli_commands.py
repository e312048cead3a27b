"""cli.py parses, cmd_NAME.py works: each command's options arrive, by name,
as the parameters of the function that does its work."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import click
import pytest

from microstackctl import (
    cli,
    cmd_backup,
    cmd_ca,
    cmd_drain,
    cmd_init,
    cmd_join,
    cmd_launch,
    cmd_reconfigure,
    cmd_remove,
    cmd_restore,
    cmd_rotate_secrets,
    cmd_status,
    cmd_tokens,
    cmd_watch,
)

WORK: dict[tuple[str, ...], Callable[..., Any]] = {
    ("init",): cmd_init.init,
    ("join",): cmd_join.join,
    ("watch",): cmd_watch.watch,
    ("remove",): cmd_remove.remove,
    ("drain",): cmd_drain.drain,
    ("undrain",): cmd_drain.undrain,
    ("reconfigure",): cmd_reconfigure.reconfigure,
    ("rotate-secrets",): cmd_rotate_secrets.rotate_secrets,
    ("launch",): cmd_launch.launch,
    ("add-node",): cmd_tokens.add_node,
    ("tokens",): cmd_tokens.list_tokens,
    ("tokens", "revoke"): cmd_tokens.revoke,
    ("status",): cmd_status.status,
    ("ca",): cmd_ca.show,
    ("ca", "rotate"): cmd_ca.rotate,
    ("backup",): cmd_backup.backup,
    ("restore",): cmd_restore.restore,
}


def _command(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli.main
    for name in path:
        assert isinstance(command, click.Group)
        found = command.commands.get(name)
        assert found is not None, path
        command = found
    return command


def test_every_command_has_its_work_function() -> None:
    def paths(group: click.Group, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
        out = set()
        for name, command in group.commands.items():
            out.add((*prefix, name))
            if isinstance(command, click.Group):
                out |= paths(command, (*prefix, name))
        return out

    assert paths(cli.main) == set(WORK)


@pytest.mark.parametrize("path", sorted(WORK))
def test_the_options_are_the_work_functions_parameters(path: tuple[str, ...]) -> None:
    options = {p.name for p in _command(path).params if p.name not in ("help",)}
    parameters = list(inspect.signature(WORK[path]).parameters)
    assert parameters[0] == "socket"
    assert set(parameters[1:]) == options
