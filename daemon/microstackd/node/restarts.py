"""Which services a re-applied role restarts: only those whose files
changed (what the new rendering writes differs from what is on disk), or
whose command line or environment changed, or that do not run. A
``reconfigure`` that changes one setting restarts only the services that
read it; one that changes nothing restarts nothing.

A service reads the role's files its ``RoleService.reads`` names, or else
those its command or its environment names, by path or by a directory above them (libvirtd's
``CONFIG_ROOT/libvirt:/etc/libvirt`` bind mount names every file under
``libvirt/``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from microstackd.node import render
from microstackd.node.roles.parts import RoleDefinition, RoleService
from microstackd.node.services import ServiceSpec


def file_paths(role: RoleDefinition, values: Mapping[str, str], root: Path) -> dict[str, Path]:
    """Each of the role's files (``ConfigFile.path``) and where it is rendered."""
    return {
        f.path: (root if f.root == "config_root" else Path(values[f.root])) / f.path
        for f in role.files
    }


def changed_files(role: RoleDefinition, values: Mapping[str, str], root: Path) -> set[str]:
    """The role's files whose rendering differs from what is on disk (or
    that are not there): read before the role is rendered."""
    changed = set()
    for f in role.files:
        path = file_paths(role, values, root)[f.path]
        try:
            current = path.read_bytes()
        except OSError:
            current = None
        if current != render.render_text(f.template, values).encode():
            changed.add(f.path)
    return changed


def files_read(
    service: RoleService, role: RoleDefinition, values: Mapping[str, str], root: Path
) -> set[str]:
    """The role's files ``service`` reads."""
    paths = file_paths(role, values, root)
    if service.reads is not None:
        return {name for name in service.reads if name in paths}
    named = set()
    # The API services under gunicorn name their config directory only in
    # their environment (OS_KEYSTONE_CONFIG_DIR=...).
    words = [
        *render.expand(service.command, values),
        *(render.expand(tuple(value for _, value in service.env), values)),
    ]
    for word in words:
        for piece in word.replace("=", ":").split(":"):
            if piece.startswith("/") and piece != "/":
                named.add(Path(piece))
    return {
        name for name, path in paths.items() if any(path == n or n in path.parents for n in named)
    }


def spec_digest(spec: ServiceSpec) -> str:
    """What a service runs (its command line and environment), as a digest:
    kept without its secrets, compared at the next apply."""
    text = json.dumps([list(spec.argv), sorted(spec.env.items())])
    return hashlib.sha256(text.encode()).hexdigest()
