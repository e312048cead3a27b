from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from microstackd import errors
from microstackd.model import EventRecord, NodeRecord, NodeState, Role, ServiceRecord, StepState
from microstackd.store import DB_NAME, Store, write_private_file, write_private_files
from microstackd.store.schema import MIGRATIONS


def _node(
    name: str = "node-1", serial: str = "aa", state: NodeState = NodeState.PENDING
) -> NodeRecord:
    return NodeRecord(
        name=name,
        role=Role.COMPUTE,
        address="10.0.0.2",
        hostname=name,
        state=state,
        message="",
        cert_serial=serial,
        cert_not_after=1.0,
        joined=1.0,
    )


def _event(
    step: str = "admit", state: StepState = StepState.RUNNING, final: bool = False
) -> EventRecord:
    return EventRecord(
        node="node-1", seq=0, step=step, state=state, message="m", percent=0, time=1.0, final=final
    )


def test_database_and_secrets_are_private(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    path = store.write_secret("tls/node.key", b"secret")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert store.read_file("tls/node.key") == b"secret"
    assert store.read_file("missing") is None


def test_atomic_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    write_private_file(tmp_path / "f", b"one")
    write_private_file(tmp_path / "f", b"two")
    assert (tmp_path / "f").read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f"]


def test_files_written_together_are_each_replaced_atomically(tmp_path: Path) -> None:
    write_private_file(tmp_path / "a" / "one", b"old")
    write_private_files(
        [
            (tmp_path / "a" / "one", b"new one", 0o600),
            (tmp_path / "a" / "two", b"two", 0o640),
            (tmp_path / "b" / "c" / "three", b"three", 0o600),
        ],
        dir_mode=0o750,
    )
    assert (tmp_path / "a" / "one").read_bytes() == b"new one"
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "two").st_mode) == 0o640
    assert (tmp_path / "b" / "c" / "three").read_bytes() == b"three"
    assert stat.S_IMODE(os.stat(tmp_path / "b" / "c").st_mode) == 0o750
    assert sorted(os.listdir(tmp_path / "a")) == ["one", "two"]


def test_files_written_together_are_all_kept_back_when_one_cannot_be(tmp_path: Path) -> None:
    write_private_file(tmp_path / "one", b"old")
    (tmp_path / "blocker").write_bytes(b"a file where a directory should be")
    with pytest.raises(errors.StorageError) as raised:
        write_private_files(
            [
                (tmp_path / "one", b"new", 0o600),
                (tmp_path / "blocker" / "two", b"two", 0o600),
                (tmp_path / "three", b"three", 0o600),
            ]
        )
    assert f"cannot write {tmp_path / 'blocker' / 'two'}" in raised.value.message
    assert (tmp_path / "one").read_bytes() == b"old"  # nothing renamed
    assert sorted(os.listdir(tmp_path)) == ["blocker", "one"]  # no temporary files


def test_a_nodes_secrets_are_written_together(tmp_path: Path) -> None:
    store = Store(tmp_path / "state")
    store.write_secrets({"node.key": b"k", "node.crt": b"c", "ca.crt": b"ca"})
    assert [store.read_file(n) for n in ("node.key", "node.crt", "ca.crt")] == [b"k", b"c", b"ca"]
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "node.key").st_mode) == 0o600


def test_events_get_increasing_sequence_numbers_and_update_steps(tmp_path: Path) -> None:
    store = Store(tmp_path)
    first = store.record_all([_event()])[0]
    second = store.record_all([_event(state=StepState.DONE, final=True)])[0]
    assert (first.seq, second.seq) == (1, 2)
    assert store.step_states("node-1") == {"admit": StepState.DONE}
    assert [e.seq for e in store.events("node-1", after_seq=1)] == [2]
    assert store.events("node-1")[-1].final
    assert store.last_seq("node-1") == 2


def test_state_survives_reopening_and_migrations_run_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.put_node(_node())
    store.record_all([_event()])
    store.close()
    again = Store(tmp_path)
    assert again.node("node-1") == _node()
    assert again.last_seq("node-1") == 1


def test_a_services_detail_is_kept_and_an_older_database_gains_the_column(tmp_path: Path) -> None:
    # A database of the schema before migration 5 (services without detail).
    old = sqlite3.connect(tmp_path / DB_NAME)
    for script in MIGRATIONS[:4]:
        old.executescript(script)
    old.execute("PRAGMA user_version = 4")
    old.execute("INSERT INTO services (node, name, state) VALUES ('node-1', 'glance', 'running')")
    old.commit()
    old.close()
    store = Store(tmp_path)
    store.put_node(_node())
    node = store.node("node-1")
    assert node is not None and node.services == (ServiceRecord("glance", "running"),)
    detail = "libvirt.LibvirtDriver, virt_type qemu (detected: cannot open /dev/kvm)"
    store.set_services("node-1", [ServiceRecord("nova-compute", "running", "", detail)])
    store.close()
    again = Store(tmp_path)
    node = again.node("node-1")
    assert node is not None
    assert node.services == (ServiceRecord("nova-compute", "running", "", detail),)


def test_replacing_a_certificate_revokes_the_old_serial_and_clears_steps(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.put_node(_node(serial="aa"))
    store.record_all([_event(state=StepState.FAILED)])
    store.put_node(_node(serial="bb"), replaces_serial="aa")
    assert store.is_revoked("aa") and not store.is_revoked("bb")
    node = store.node("node-1")
    assert node is not None and node.cert_serial == "bb"
    assert store.step_states("node-1") == {}


def test_a_new_membership_drops_the_old_events_and_numbers_on(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.put_node(_node(serial="aa"))
    store.record_all([_event(), _event(final=True)])
    assert store.final_event("node-1") is not None
    store.put_node(_node(serial="bb"), replaces_serial="aa")
    assert store.events("node-1") == [] and store.final_event("node-1") is None
    assert store.last_seq("node-1") == 2
    (event,) = store.record_all([_event()])
    assert event.seq == 3
    store.put_node(_node(serial="bb"))  # the same membership, updated: nothing lost
    assert [e.seq for e in store.events("node-1")] == [3]
    store.close()
    assert Store(tmp_path).last_seq("node-1") == 3


def test_control_is_listed_first(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.put_node(_node("b-node"))
    control = NodeRecord(
        name="z-ctl",
        role=Role.CONTROL,
        address="10.0.0.1",
        hostname="z",
        state=NodeState.ACTIVE,
        message="",
        cert_serial="cc",
        cert_not_after=1.0,
        joined=2.0,
    )
    store.put_node(control)
    assert [n.name for n in store.nodes()] == ["z-ctl", "b-node"]


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(errors.StorageError, match="cannot write"):
        Store(blocker / "state")


def test_nodes_are_read_again_after_any_write_to_them(tmp_path: Path) -> None:
    """``nodes()`` is cached until the database changes: every kind of write
    that changes a node shows at once, through this connection or another."""
    import sqlite3

    from microstackd.model import NodeUpdate, ServiceRecord

    store = Store(tmp_path)
    store.put_node(_node("a"))
    store.put_node(_node("b"))
    assert [n.name for n in store.nodes()] == ["a", "b"]
    assert store.nodes() == store.nodes()
    store.set_services("a", [ServiceRecord("nova-compute", "running")])
    assert store.nodes()[0].services == (ServiceRecord("nova-compute", "running"),)
    store.record_all([], [NodeUpdate("b", NodeState.ACTIVE)])
    assert store.nodes()[1].state is NodeState.ACTIVE
    store.remove_node("a", "aa", 5.0)
    assert store.nodes()[0].state is NodeState.REMOVED and store.nodes()[0].services == ()
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("UPDATE nodes SET message = 'by hand' WHERE name = 'b'")
    other.close()
    assert store.nodes()[1].message == "by hand"
    listed = store.nodes()
    listed.clear()  # the caller's copy
    assert len(store.nodes()) == 2


def test_heartbeat_times_land_in_one_commit_and_never_move_back(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for name in ("a", "b", "c"):
        store.put_node(_node(name))
    before = store.nodes()
    store.touch_nodes({"a": 10.0, "b": 20.0})
    store.touch_nodes({"a": 5.0})
    seen = {n.name: n.last_seen for n in store.nodes()}
    assert seen == {"a": 10.0, "b": 20.0, "c": 0.0}
    assert {n.name: n.last_seen for n in Store(tmp_path).nodes()} == seen
    assert store.nodes()[2] is before[2]  # untouched records are kept, not rebuilt
    assert store.services("a") == []


def test_the_state_dir_lock_is_exclusive_and_names_its_holder(tmp_path: Path) -> None:
    from microstackd.store.lock import LOCK, StateLock

    first = StateLock.acquire(tmp_path / "state")
    assert (tmp_path / "state" / LOCK).read_text() == f"{os.getpid()}\n"
    with pytest.raises(errors.AlreadyRunning, match=rf"pid {os.getpid()}\b.*--state-dir"):
        StateLock.acquire(tmp_path / "state")
    first.release()
    StateLock.acquire(tmp_path / "state").release()  # free again once released


def test_identity_candidates_are_every_node_a_joiner_could_be_taken_for(tmp_path: Path) -> None:
    """One query: names and hostnames compared as DNS does, the same IPv4
    address, every IPv6 node for an IPv6 joiner (its text has several forms);
    never the joiner's own name, never a removed node."""
    import dataclasses

    store = Store(tmp_path)
    nodes = {
        "upper": dataclasses.replace(_node("upper"), hostname="Web1.Example."),
        "same-ip": dataclasses.replace(_node("same-ip"), address="10.0.0.7"),
        "v6": dataclasses.replace(_node("v6"), address="fd00:0::5"),
        "other": dataclasses.replace(_node("other"), address="10.0.0.8"),
        "gone": dataclasses.replace(_node("gone"), hostname="web1.example", address="10.0.0.7"),
        "me": dataclasses.replace(_node("me"), hostname="web1.example"),
    }
    for node in nodes.values():
        store.put_node(node)
    store.remove_node("gone", "aa", 5.0)

    def found(keys: set[str], address: str) -> set[str]:
        return {n.name for n in store.identity_candidates("me", keys, address)}

    assert found({"web1.example"}, "10.0.0.9") == {"upper"}
    assert found({"nobody"}, "10.0.0.7") == {"same-ip"}
    assert found({"nobody"}, "fd00::5") == {"v6"}
    assert found({"other"}, "10.0.0.9") == {"other"}
    assert found({"nobody"}, "10.0.0.9") == set()
