from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Node

_hosts = itertools.count(2)


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "pw.txt"
    path.write_text("correct horse battery staple\n")
    return path


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Start a daemon on its own loopback address; all are stopped afterwards."""
    nodes: list[Node] = []

    def make(name: str, *extra: str, env: dict[str, str] | None = None) -> Node:
        host = next(_hosts) % 250
        root = tmp_path / f"host-{host}"
        root.mkdir()
        node = Node(name=name, address=f"127.0.{host}.1", root=root, extra=list(extra), env=env)
        nodes.append(node)
        return node.start()

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def control(make_node: Callable[..., Node], password_file: Path) -> Node:
    node = make_node("ctl")
    node.init_control(password_file)
    return node
