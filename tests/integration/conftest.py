from __future__ import annotations

import itertools
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from microstackd.model import ClusterRecord, NodeCredentials
from microstackd.store import Store
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


@pytest.fixture
def member(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> Iterator[tuple[ClusterRecord, NodeCredentials]]:
    """node-1 joined, then stopped (SIGSTOP): the test calls the control, and
    beats, with its credentials."""
    compute = make_node("node-1")
    compute.join(control, password_file)
    store = Store(compute.state_dir)
    cluster, creds = store.cluster(), store.credentials()
    store.close()
    assert cluster is not None and compute.proc is not None
    compute.proc.send_signal(signal.SIGSTOP)
    try:
        yield cluster, creds
    finally:
        compute.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def make_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """A filesystem of its own of a given size (``"8m"``), for a full disk;
    unmounted afterwards. Skips where a tmpfs cannot be mounted."""
    mounted: list[Path] = []

    def make(size: str) -> Path:
        where = tmp_path / f"small-disk-{len(mounted)}"
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(where)
        return where

    try:
        yield make
    finally:
        for where in mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)
