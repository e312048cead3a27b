"""A node whose database was lost (deleted or truncated) but whose keys are
still there refuses to start, saying what it found and how to restore it
(issue 14, item 7); it never starts as "not part of a cluster", so `init`
cannot overwrite the cluster CA and orphan every member."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.launcher import NotReady
from tests.integration.harness import Node


def _start_fails(node: Node) -> str:
    with pytest.raises(NotReady) as failed:
        node.start()
    assert "exited 1 before it was ready" in failed.value.reason, failed.value.log
    return failed.value.log


def _lose_database(node: Node, how: str) -> None:
    db = node.state_dir / "microstackd.db"
    for extra in ("microstackd.db-wal", "microstackd.db-shm"):
        (node.state_dir / extra).unlink(missing_ok=True)
    if how == "deleted":
        db.unlink()
    elif how == "emptied":
        db.write_bytes(b"")
    else:  # cut short, as a failing disk or a bad copy leaves it
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("how", ["deleted", "emptied", "truncated"])
def test_a_control_without_its_database_refuses_to_start(control: Node, how: str) -> None:
    tls = control.state_dir / "tls"
    ca_key = (tls / "ca.key").read_bytes()
    backup = control.root / "backup.db"
    control.stop()
    shutil.copy(control.state_dir / "microstackd.db", backup)
    _lose_database(control, how)

    log = _start_fails(control)
    assert "Traceback" not in log, log
    if how == "truncated":
        assert "damaged" in log, log
    else:
        for found in ("tls/ca.key", "tls/ca.crt", "verifier.json"):
            assert found in log, log
    assert "restore" in log and "microstackd.db" in log, log
    assert not control.socket.exists()  # it never served: nobody could run init
    assert (tls / "ca.key").read_bytes() == ca_key

    # Restoring the database is all it takes.
    shutil.copy(backup, control.state_dir / "microstackd.db")
    control.start()
    assert control.status()["cluster"]["control_name"] == "ctl"


def test_a_compute_without_its_database_refuses_to_start(
    control: Node, make_node: Callable[..., Node], password_file: Path
) -> None:
    node = make_node("node-1")
    node.join(control, password_file)
    node.stop()
    _lose_database(node, "deleted")
    log = _start_fails(node)
    assert "tls/node.key" in log and "tls/node.crt" in log, log
    assert "remove node-1 --force" in log, log


def test_init_never_overwrites_an_existing_cluster_ca(
    make_node: Callable[..., Node], password_file: Path
) -> None:
    """The window before init's commit point (keys written, the cluster not
    yet recorded: a crash there): a resumed init keeps the CA it wrote."""
    node = make_node("ctl")
    node.init_control(password_file)
    tls = node.state_dir / "tls"
    ca_key, ca_crt = (tls / "ca.key").read_bytes(), (tls / "ca.crt").read_bytes()
    node.stop()
    subprocess.run(  # back to before the commit point: no cluster, no steps
        ["sqlite3", str(node.state_dir / "microstackd.db"),
         "DELETE FROM meta; DELETE FROM steps; DELETE FROM nodes;"],
        check=True,
    )  # fmt: skip
    node.start()
    node.init_control(password_file)
    assert (tls / "ca.key").read_bytes() == ca_key
    assert (tls / "ca.crt").read_bytes() == ca_crt
    assert node.status()["cluster"]["ca_fingerprint"]
