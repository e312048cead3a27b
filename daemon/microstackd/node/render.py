"""Render a role's configuration files into the config root.

Each file is rendered completely in memory first (a missing setting fails
before anything is written), then all are written atomically with mode 0640,
their fsyncs together.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from microstackd import errors
from microstackd.node.roles import RoleDefinition
from microstackd.store.files import write_private_files

FILE_MODE = 0o640


def template_text(name: str) -> str:
    try:
        return (resources.files("microstackd.node") / "templates" / name).read_text()
    except (FileNotFoundError, OSError) as exc:
        raise errors.ConfigError(f"template {name} is missing from the package") from exc


def render_text(name: str, values: Mapping[str, str]) -> str:
    try:
        return string.Template(template_text(name)).substitute(values)
    except KeyError as exc:
        raise errors.ConfigError(f"template {name} needs setting {exc.args[0]!r}") from exc
    except ValueError as exc:
        raise errors.ConfigError(f"template {name} is malformed: {exc}") from exc


def render_role(role: RoleDefinition, values: Mapping[str, str], root: Path) -> list[Path]:
    """Render every file of ``role``; return the paths written. A file goes
    under ``root`` (the config root) unless its ``root`` names another value."""
    missing = [key for key in role.settings if key not in values]
    if missing:
        raise errors.InvalidArgument(
            f"the {role.name} role needs settings the control did not issue: {', '.join(missing)}"
        )
    rendered = [
        (
            (root if f.root == "config_root" else Path(values[f.root])) / f.path,
            render_text(f.template, values),
            f.mode,
        )
        for f in role.files
    ]
    try:
        write_private_files(
            [(path, text.encode(), mode) for path, text, mode in rendered], dir_mode=0o750
        )
    except errors.StorageError as exc:
        raise errors.ConfigError(f"{exc.message} (config root {root})") from exc
    return [path for path, _, _ in rendered]


def expand(command: tuple[str, ...], values: Mapping[str, str]) -> tuple[str, ...]:
    try:
        return tuple(string.Template(part).substitute(values) for part in command)
    except KeyError as exc:
        raise errors.ConfigError(f"command {' '.join(command)} needs {exc.args[0]!r}") from exc
