"""A restored control and the certificates its members renewed after the
backup (member/callers.py): accepted once when issued after the backup for
that member and role, refused otherwise."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from microstackd import errors
from microstackd.member.callers import Callers
from microstackd.model import Access, ClusterRecord, NodeRecord, NodeState, Role
from microstackd.store import RESTORED_BACKUP_TIME, Store
from microstackd.trust import x509

BACKUP = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
World = tuple[Store, x509.CertificateAuthority, x509.Identity]


def _identity(ca: x509.CertificateAuthority, name: str, role: Role, at: datetime) -> x509.Identity:
    key = x509.generate_key()
    cert = x509.issue_certificate(
        ca, key.public_key(), node_name=name, role=role, address="10.0.0.2",
        hostname=name, now=at, lifetime=timedelta(days=365),
    )  # fmt: skip
    return x509.identity_of(cert)


@pytest.fixture
def world(tmp_path: Path) -> World:
    ca = x509.create_ca("c1", BACKUP - timedelta(days=30))
    store = Store(tmp_path / "state")
    store.set_cluster(ClusterRecord("c1", Role.CONTROL, "ctl", "10.0.0.1", 10002, 10003, "ff", 0.0))
    known = _identity(ca, "node-1", Role.COMPUTE, BACKUP - timedelta(days=1))
    store.put_node(
        NodeRecord(
            name="node-1", role=Role.COMPUTE, address="10.0.0.2", hostname="node-1",
            state=NodeState.ACTIVE, message="", cert_serial=format(known.serial, "x"),
            cert_not_after=known.not_after.timestamp(), joined=time.time(),
        )
    )  # fmt: skip
    return store, ca, known


def test_without_a_restore_an_unknown_serial_is_refused(world: World) -> None:
    store, ca, _known = world
    later = _identity(ca, "node-1", Role.COMPUTE, BACKUP + timedelta(hours=1))
    with pytest.raises(errors.PermissionDenied, match="is not a member"):
        Callers(store).authorise(later, Access.MEMBER)


def test_a_renewal_issued_after_the_backup_becomes_the_members(world: World) -> None:
    store, ca, known = world
    store.set_meta({RESTORED_BACKUP_TIME: repr(BACKUP.timestamp())})
    later = _identity(ca, "node-1", Role.COMPUTE, BACKUP + timedelta(hours=1))
    Callers(store).authorise(later, Access.MEMBER)
    node = store.node("node-1")
    assert node is not None and node.cert_serial == format(later.serial, "x")
    assert store.is_revoked(format(known.serial, "x"))  # the one the backup knew
    Callers(store).authorise(later, Access.MEMBER)  # and it stays accepted


def test_what_was_not_renewed_after_the_backup_is_refused(world: World) -> None:
    store, ca, known = world
    store.set_meta({RESTORED_BACKUP_TIME: repr(BACKUP.timestamp())})
    callers = Callers(store)
    cases = [
        # issued before the backup: the backup would know it
        _identity(ca, "node-1", Role.COMPUTE, BACKUP - timedelta(minutes=5)),
        # another role than the member's
        _identity(ca, "node-1", Role.CONTROL, BACKUP + timedelta(hours=1)),
        # a node the backup does not know (joined after it)
        _identity(ca, "node-9", Role.COMPUTE, BACKUP + timedelta(hours=1)),
    ]
    for identity in cases:
        with pytest.raises(errors.PermissionDenied):
            callers.authorise(identity, Access.MEMBER)
    node = store.node("node-1")
    assert node is not None and node.cert_serial == format(known.serial, "x")
    # A removed member stays removed; a revoked serial stays revoked.
    later = _identity(ca, "node-1", Role.COMPUTE, BACKUP + timedelta(hours=1))
    store.remove_node("node-1", node.cert_serial, time.time())
    with pytest.raises(errors.PermissionDenied):
        callers.authorise(later, Access.MEMBER)
