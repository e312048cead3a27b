"""The rooms of daemon/microstackd and what each may import (docs/architecture.md).

Walks every module's imports with ``ast`` (those inside functions and
``TYPE_CHECKING`` blocks too) and fails when a room imports a room, or a
gRPC package, it may not. Data flows one way: CLI -> api -> domain (control,
member, node, cloud) -> store / peers; only api/, peers/ and wire/ speak
gRPC; trust/ and the enrolment machine are pure.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "daemon" / "microstackd"

#: gRPC, its generated code and protobuf.
GRPC = frozenset({"grpc", "grpc_health", "grpc_reflection", "microstack_api", "google"})
#: The pure core every room may use (``lazy``: a module imported at first use).
BASE = frozenset({"model", "errors", "versions", "lazy"})

#: room -> the rooms (and "grpc") it may import, besides itself.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "": frozenset(),  # microstackd/__init__.py
    "model": frozenset(),
    "errors": frozenset(),
    "config": BASE,
    # The skew window: pure; reads the package's __version__.
    "versions": frozenset({"", "errors", "model"}),
    "logcontext": frozenset(),
    "lazy": frozenset(),
    "notify": frozenset(),
    "commands": frozenset(),
    "trust": BASE,
    "enrolment.machine": BASE,
    "store": BASE,
    "enrolment": BASE | {"enrolment.machine", "store"},
    "wire": BASE | {"grpc"},
    "peers": BASE | {"trust", "wire", "grpc"},
    "cloud": BASE | {"commands"},
    "node": BASE | {"config", "commands", "store", "enrolment", "enrolment.machine"},
    "member": BASE | {"config", "store", "trust", "enrolment", "peers"},
    "control": BASE
    | {"config", "store", "trust", "enrolment", "enrolment.machine", "peers", "cloud", "node"}
    # The backup's dump and the restore's loads (control/backup.py, restore.py).
    | {"commands"},
    "api": BASE
    | {"grpc", "wire", "trust", "store", "enrolment", "control", "member", "node", "logcontext"},
    # The wiring and the entry point: everything.
    "daemon": frozenset({"*"}),
    "main": frozenset({"*"}),
}


def room_of(module: str) -> str:
    """``microstackd.enrolment.runner`` -> ``enrolment``; the machine is a room of its own."""
    parts = module.split(".")[1:]
    if parts[:2] == ["enrolment", "machine"]:
        return "enrolment.machine"
    return parts[0] if parts else ""


def module_of(path: Path, root: Path) -> str:
    module = "microstackd." + ".".join(path.relative_to(root).with_suffix("").parts)
    return module.removesuffix(".__init__")


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name == "microstackd":  # from microstackd import errors, ...
                found += [(node.lineno, f"microstackd.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, name))
    return found


def violations(path: Path, root: Path = PACKAGE) -> list[str]:
    """What ``path`` (a module under ``root``) imports that its room may not."""
    module = module_of(path, root)
    room = room_of(module)
    where = path.relative_to(root)
    allowed = MAY_IMPORT.get(room)
    if allowed is None:
        return [f"{where}: room {room!r} is not in the layer table"]
    if "*" in allowed:
        return []
    bad = []
    for line, name in _imports(path, module):
        top = name.split(".")[0]
        if top == "microstackd":
            target = room_of(name)
            ok = target in allowed or target == room
        else:
            ok = top not in GRPC or "grpc" in allowed
            target = top
        if not ok:
            bad.append(f"{where}:{line}: {room} imports {name} ({target})")
    return bad


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "openstack_env" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_rooms_import_only_what_they_may(path: Path) -> None:
    assert violations(path) == []


def test_node_uses_neither_control_nor_member() -> None:
    assert not MAY_IMPORT["node"] & {"control", "member", "api"}


def test_nothing_below_api_speaks_grpc_but_peers_and_wire() -> None:
    assert {room for room, allowed in MAY_IMPORT.items() if "grpc" in allowed} == {
        "wire",
        "peers",
        "api",
    }


@pytest.mark.parametrize(
    ("where", "source", "expected"),
    [
        ("trust/bad.py", "import grpc\n", "trust imports grpc"),
        (
            "trust/bad.py",
            "from microstackd.store import Store\n",
            "trust imports microstackd.store",
        ),
        ("enrolment/machine.py", "from microstackd import store\n", "microstackd.store"),
        ("node/bad.py", "from microstackd.control import plane\n", "node imports"),
        ("control/bad.py", "from microstack_api.v1 import cluster_pb2\n", "control imports"),
        ("cloud/bad.py", "def f():\n    from microstackd.api import access\n", "cloud imports"),
    ],
)
def test_the_walk_catches_a_forbidden_import(
    where: str, source: str, expected: str, tmp_path: Path
) -> None:
    root = tmp_path / "microstackd"
    (root / where).parent.mkdir(parents=True)
    (root / where).write_text(source)
    found = violations(root / where, root)
    assert any(expected in v for v in found), found
