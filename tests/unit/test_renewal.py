"""Certificate renewal: the pure rules (lifetimes, when a renewal is due, the
trust bundle), the store's pending serial, the control's signing (identity
from its record, never from the CSR), the switch at first use, and a
node's refusal of a renewal that is not for it (adversarial)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from microstackd import errors
from microstackd.config import DaemonConfig, Ports
from microstackd.control.certs import Certificates, expiry_warning
from microstackd.control.cluster import Cluster
from microstackd.enrolment.events import EventBus, Signal
from microstackd.enrolment.runner import Runner
from microstackd.main import build_config, parse_args
from microstackd.member.callers import Callers
from microstackd.member.renewal import Renewal
from microstackd.model import (
    Access,
    BootstrapCertificate,
    ClusterRecord,
    NodeRecord,
    NodeState,
    Role,
    TokenRecord,
)
from microstackd.store import Store
from microstackd.store.files import BOOTSTRAP_CERT, BOOTSTRAP_KEY, CA_CERT, CA_KEY, VERIFIER
from microstackd.trust import kdf, names, x509

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CLUSTER_ID = "0123456789abcdef"


# ------------------------------------------------------------ x509 rules --


def test_a_lifetime_of_seconds_is_honoured_and_never_outlives_the_ca() -> None:
    ca = x509.create_ca(CLUSTER_ID, NOW, lifetime=timedelta(seconds=60))
    key = x509.generate_key()
    cert = x509.issue_certificate(
        ca, key.public_key(), node_name="n1", role=Role.COMPUTE, address="10.0.0.2",
        hostname="n1", now=NOW, lifetime=timedelta(seconds=20),
    )  # fmt: skip
    assert cert.not_valid_after_utc == NOW + timedelta(seconds=20)
    longer = x509.issue_certificate(
        ca, key.public_key(), node_name="n1", role=Role.COMPUTE, address="10.0.0.2",
        hostname="n1", now=NOW, lifetime=timedelta(days=365),
    )  # fmt: skip
    assert longer.not_valid_after_utc == ca.cert.not_valid_after_utc


@pytest.mark.parametrize("lifetime", [timedelta(seconds=1), timedelta(0), timedelta(seconds=-5)])
def test_a_lifetime_below_two_seconds_is_refused(lifetime: timedelta) -> None:
    with pytest.raises(ValueError, match="at least"):
        x509.create_ca(CLUSTER_ID, NOW, lifetime=lifetime)


def test_renewal_is_due_within_the_threshold_and_after_expiry() -> None:
    ca = x509.create_ca(CLUSTER_ID, NOW)
    cert = x509.issue_certificate(
        ca, x509.generate_key().public_key(), node_name="n1", role=Role.COMPUTE,
        address="10.0.0.2", hostname="n1", now=NOW, lifetime=timedelta(seconds=100),
    )  # fmt: skip
    before = timedelta(seconds=30)
    assert not x509.renewal_due(cert, NOW + timedelta(seconds=69), before)
    assert x509.renewal_due(cert, NOW + timedelta(seconds=70), before)
    assert x509.renewal_due(cert, NOW + timedelta(seconds=500), before)
    assert not x509.expired(cert, NOW + timedelta(seconds=100))
    assert x509.expired(cert, NOW + timedelta(seconds=101))


def test_a_trust_bundle_holds_only_ca_certificates() -> None:
    one, two = x509.create_ca(CLUSTER_ID, NOW), x509.create_ca(CLUSTER_ID, NOW)
    bundle = one.cert_pem() + two.cert_pem()
    assert [x509.fingerprint(c) for c in x509.load_bundle(bundle)] == [
        x509.fingerprint(one.cert),
        x509.fingerprint(two.cert),
    ]
    leaf = x509.issue_certificate(
        one, x509.generate_key().public_key(), node_name="n1", role=Role.COMPUTE,
        address="10.0.0.2", hostname="n1", now=NOW,
    )  # fmt: skip
    for bad in (b"", b"garbage", one.cert_pem() + x509.cert_to_pem(leaf), one.cert_pem() * 9):
        with pytest.raises(ValueError):
            x509.load_bundle(bad)


@pytest.mark.parametrize(
    ("text", "seconds"), [("30", 30.0), ("30s", 30.0), ("1.5m", 90.0), ("12h", 43200.0),
                          ("365d", 365 * 86400.0), (7, 7.0)],
)  # fmt: skip
def test_durations_take_a_unit(text: object, seconds: float) -> None:
    assert names.duration(text, "--x", 2, 10**10) == seconds


@pytest.mark.parametrize("text", ["", "d", "-5s", "1e3", "10w", "nan", "5 d", "0s", "1s"])
def test_bad_durations_are_refused_with_the_flag(text: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="--renew-before"):
        names.duration(text, "--renew-before", 2, 10**10)


def test_renew_before_must_be_shorter_than_the_lifetimes() -> None:
    config = build_config(parse_args(["--cert-lifetime", "20s", "--renew-before", "12s",
                                      "--bootstrap-cert-lifetime", "30s"]))  # fmt: skip
    assert (config.cert_lifetime, config.renew_before) == (20.0, 12.0)
    assert config.renewal_check == 1.5
    with pytest.raises(errors.InvalidArgument, match="must be shorter"):
        build_config(parse_args(["--cert-lifetime", "20s", "--renew-before", "20s"]))
    with pytest.raises(errors.InvalidArgument, match="must be shorter"):
        build_config(parse_args(["--bootstrap-cert-lifetime", "10d"]))  # 30d by default
    defaults = build_config(parse_args([]))
    assert defaults.cert_lifetime == 365 * 86400 and defaults.renew_before == 30 * 86400
    assert defaults.renewal_check == 3600


# ------------------------------------------------------------- the store --


def _node(name: str = "c1", serial: str = "aa", state: NodeState = NodeState.ACTIVE) -> NodeRecord:
    return NodeRecord(
        name=name, role=Role.COMPUTE, address="10.0.0.2", hostname=name, state=state,
        message="", cert_serial=serial, cert_not_after=time.time() + 100, joined=1.0,
    )  # fmt: skip


def test_a_pending_serial_becomes_the_nodes_at_first_use_and_the_old_is_revoked(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "s")
    store.put_node(_node())
    store.set_pending_certificate("c1", "bb", 500.0, 1.0)
    node = store.node("c1")
    assert node is not None and (node.cert_serial, node.pending_serial) == ("aa", "bb")
    assert not store.is_revoked("aa")
    assert not store.promote_certificate("c1", "cc", 2.0)  # not its pending one
    assert store.promote_certificate("c1", "bb", 2.0)
    node = store.node("c1")
    assert node is not None
    assert (node.cert_serial, node.cert_not_after, node.pending_serial) == ("bb", 500.0, "")
    assert store.is_revoked("aa") and not store.is_revoked("bb")
    assert not store.promote_certificate("c1", "bb", 3.0)  # once


def test_a_renewal_never_used_is_revoked_by_the_next_and_by_removal(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.put_node(_node())
    store.set_pending_certificate("c1", "bb", 500.0, 1.0)
    store.set_pending_certificate("c1", "cc", 600.0, 2.0)
    assert store.is_revoked("bb") and not store.is_revoked("aa")
    store.remove_node("c1", "aa", 3.0)
    assert store.is_revoked("cc") and store.is_revoked("aa")


def test_a_rejoin_revokes_an_unused_renewal(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    store.put_node(_node())
    store.set_pending_certificate("c1", "bb", 500.0, 1.0)
    store.put_node(_node(serial="dd", state=NodeState.PENDING), replaces_serial="aa")
    assert store.is_revoked("aa") and store.is_revoked("bb")
    node = store.node("c1")
    assert node is not None and (node.cert_serial, node.pending_serial) == ("dd", "")


# ---------------------------------------------------- the control's side --


class World:
    """A control's store and cluster with a real CA, and one compute."""

    def __init__(self, tmp_path: Path, renew_before: float = 30.0) -> None:
        self.config = DaemonConfig(
            state_dir=tmp_path / "control", socket=tmp_path / "s.sock", listen_host="10.0.0.1",
            listen_port=0, cluster_port=0, node_name="control", hostname="control",
            cert_lifetime=60.0, renew_before=renew_before,
        )  # fmt: skip
        self.store = store = Store(self.config.state_dir)
        self.ca = ca = x509.create_ca(CLUSTER_ID, datetime.now(UTC))
        params = kdf.KdfParams(salt=b"s" * 16, log2_n=10, r=8, p=1)
        store.write_secrets(
            {
                CA_KEY: ca.key_pem(),
                CA_CERT: ca.cert_pem(),
                VERIFIER: kdf.encode_verifier(b"v" * 32, params),
            }
        )
        store.set_cluster(
            ClusterRecord(
                CLUSTER_ID, Role.CONTROL, "control", "10.0.0.1", 10002, 10003,
                x509.fingerprint(ca.cert), ca.cert.not_valid_after_utc.timestamp(),
            )
        )  # fmt: skip
        self.compute_key = x509.generate_key()
        self.compute = self._issue(self.compute_key, "c1", Role.COMPUTE, "10.0.0.2")
        store.put_node(
            NodeRecord(
                name="c1", role=Role.COMPUTE, address="10.0.0.2", hostname="c1-host",
                state=NodeState.ACTIVE, message="", cert_serial=format(self.compute.serial, "x"),
                cert_not_after=self.compute.not_after.timestamp(), joined=1.0,
            )
        )  # fmt: skip
        control = self._issue(x509.generate_key(), "control", Role.CONTROL, "10.0.0.1")
        store.put_node(
            NodeRecord(
                name="control", role=Role.CONTROL, address="10.0.0.1", hostname="control",
                state=NodeState.ACTIVE, message="", cert_serial=format(control.serial, "x"),
                cert_not_after=control.not_after.timestamp(), joined=0.5,
            )
        )  # fmt: skip
        runner = Runner(store, EventBus(store))
        self.cluster = Cluster(self.config, store, runner, Ports(), Signal("joined"))
        self.certificates = Certificates(self.cluster)
        self.callers = Callers(store)

    def _issue(self, key: x509.PrivateKey, name: str, role: Role, address: str) -> x509.Identity:
        cert = x509.issue_certificate(
            self.ca, key.public_key(), node_name=name, role=role, address=address,
            hostname=name, now=datetime.now(UTC),
        )  # fmt: skip
        return x509.identity_of(cert)


def test_a_member_renewal_is_signed_for_its_recorded_identity_not_the_csr(
    tmp_path: Path,
) -> None:
    from cryptography import x509 as cx
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    world = World(tmp_path)
    key = x509.generate_key()
    # The CSR asks for more: the control's name, a CA, another address.
    csr = (
        cx.CertificateSigningRequestBuilder()
        .subject_name(cx.Name([cx.NameAttribute(NameOID.COMMON_NAME, "c1")]))
        .add_extension(
            cx.SubjectAlternativeName(
                [cx.DNSName(x509.CONTROL_SERVER_NAME), cx.DNSName("control")]
            ),
            critical=False,
        )
        .add_extension(cx.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    cert_pem, bundle = world.certificates.renew_member(world.compute, csr)
    cert = x509.load_cert(cert_pem)
    assert x509.identity_of(cert).name == "c1" and x509.identity_of(cert).role is Role.COMPUTE
    assert sorted(x509.dns_names(cert)) == ["c1", "c1-host"]
    assert not x509.is_ca(cert)
    assert cert.public_key() == key.public_key()
    assert bundle == world.ca.cert_pem()
    lifetime = cert.not_valid_after_utc - datetime.now(UTC)
    assert timedelta(seconds=50) < lifetime <= timedelta(seconds=60)
    node = world.store.node("c1")
    assert node is not None and node.pending_serial == format(cert.serial_number, "x")


def test_a_csr_for_another_name_or_from_a_removed_node_is_refused(tmp_path: Path) -> None:
    world = World(tmp_path)
    other = x509.make_csr(x509.generate_key(), "control")
    with pytest.raises(errors.InvalidArgument, match="not for node 'c1'"):
        world.certificates.renew_member(world.compute, other)
    with pytest.raises(errors.InvalidArgument):
        world.certificates.renew_member(world.compute, b"not a csr")
    world.store.remove_node("c1", format(world.compute.serial, "x"), time.time())
    with pytest.raises(errors.PermissionDenied, match="not a member"):
        world.certificates.renew_member(world.compute, x509.make_csr(x509.generate_key(), "c1"))


def test_the_old_serial_is_refused_once_the_renewed_one_was_used(tmp_path: Path) -> None:
    world = World(tmp_path)
    old = world.compute
    cert_pem, _ = world.certificates.renew_member(old, x509.make_csr(x509.generate_key(), "c1"))
    new = x509.identity_of(x509.load_cert(cert_pem))
    world.callers.authorise(old, Access.MEMBER)  # still the node's until the new one is used
    world.callers.authorise(new, Access.MEMBER)  # its first use
    world.callers.authorise(new, Access.MEMBER)
    with pytest.raises(errors.PermissionDenied, match="revoked"):
        world.callers.authorise(old, Access.MEMBER)
    node = world.store.node("c1")
    assert node is not None
    assert (node.cert_serial, node.pending_serial) == (format(new.serial, "x"), "")
    assert node.cert_not_after == new.not_after.timestamp()


def test_a_renewal_replaced_before_use_is_never_accepted(tmp_path: Path) -> None:
    world = World(tmp_path)
    first_pem, _ = world.certificates.renew_member(
        world.compute, x509.make_csr(x509.generate_key(), "c1")
    )
    world.certificates.renew_member(world.compute, x509.make_csr(x509.generate_key(), "c1"))
    first = x509.identity_of(x509.load_cert(first_pem))
    with pytest.raises(errors.PermissionDenied, match="revoked"):
        world.callers.authorise(first, Access.MEMBER)
    world.callers.authorise(world.compute, Access.MEMBER)


def test_the_control_renews_its_own_certificate_at_once(tmp_path: Path) -> None:
    world = World(tmp_path)
    before = world.store.node("control")
    assert before is not None
    cert_pem, _ = world.certificates.renew_own(x509.make_csr(x509.generate_key(), "control"))
    cert = x509.load_cert(cert_pem)
    assert x509.CONTROL_SERVER_NAME in x509.dns_names(cert)
    after = world.store.node("control")
    assert after is not None and after.cert_serial == format(cert.serial_number, "x")
    assert world.store.is_revoked(before.cert_serial)
    # The member path cannot be used for it (nor by anyone for it).
    with pytest.raises(errors.PermissionDenied):
        world.certificates.renew_member(
            x509.identity_of(cert), x509.make_csr(x509.generate_key(), "control")
        )


def test_status_warns_of_a_certificate_close_to_expiry_that_was_not_renewed() -> None:
    at = 1000.0
    node = _node()
    fine = NodeRecord(**{**node.__dict__, "cert_not_after": at + 16})
    close = NodeRecord(**{**node.__dict__, "cert_not_after": at + 14})
    gone = NodeRecord(**{**node.__dict__, "cert_not_after": at - 1})
    assert expiry_warning(fine, at, 30.0) == ""
    assert "was not renewed" in expiry_warning(close, at, 30.0)
    assert "microstackctl add-node c1" in expiry_warning(gone, at, 30.0)
    removed = NodeRecord(**{**close.__dict__, "state": NodeState.REMOVED})
    assert expiry_warning(removed, at, 30.0) == ""


# ---------------------------------------------------------- a node's side --


def _renewal(world: World, tmp_path: Path) -> tuple[Renewal, Store, list[str]]:
    """A compute's renewal loop whose 'control' is ``world`` in-process."""
    config = DaemonConfig(
        state_dir=tmp_path / "compute", socket=tmp_path / "c.sock", listen_host="10.0.0.2",
        listen_port=0, cluster_port=0, node_name="control", hostname="control",
        cert_lifetime=60.0, renew_before=30.0, bootstrap_cert_lifetime=60.0,
    )  # fmt: skip
    store = Store(config.state_dir)
    raised: list[str] = []
    renewed, bootstrap_renewed = Signal("r"), Signal("b")

    async def on_renewed() -> None:
        raised.append("cluster")

    async def on_bootstrap() -> None:
        raised.append("bootstrap")

    renewed.subscribe(on_renewed)
    bootstrap_renewed.subscribe(on_bootstrap)
    holder = BootstrapCertificate("", 0.0)
    return (
        Renewal(config, store, holder, world.certificates.renew_own, renewed, bootstrap_renewed),
        store,
        raised,
    )


def test_a_node_refuses_a_renewal_that_is_not_for_its_key_or_name_or_ca(tmp_path: Path) -> None:
    world = World(tmp_path)
    renewal, _store, _ = _renewal(world, tmp_path)
    key, at = x509.generate_key(), datetime.now(UTC)
    good_pem, bundle = world.certificates.renew_own(x509.make_csr(key, "control"))
    assert renewal._checked(key, good_pem, bundle, at).public_key() == key.public_key()
    with pytest.raises(errors.PermissionDenied, match="does not belong"):
        renewal._checked(x509.generate_key(), good_pem, bundle, at)
    other_pem, _ = world.certificates.renew_member(world.compute, x509.make_csr(key, "c1"))
    with pytest.raises(errors.PermissionDenied, match="names another node"):
        renewal._checked(key, other_pem, bundle, at)
    stranger = x509.create_ca(CLUSTER_ID, at)
    with pytest.raises(errors.PermissionDenied, match="not issued by a CA it sent"):
        renewal._checked(key, good_pem, stranger.cert_pem(), at)
    with pytest.raises(errors.PermissionDenied, match="unusable"):
        renewal._checked(key, good_pem, b"garbage", at)


def test_the_bootstrap_certificate_renews_and_waits_for_valid_tokens(tmp_path: Path) -> None:
    world = World(tmp_path)
    renewal, store, raised = _renewal(world, tmp_path)
    key = x509.generate_key()
    start = datetime.now(UTC)
    old = x509.self_signed_bootstrap_certificate(key, start, lifetime=timedelta(seconds=60))
    store.write_secrets(
        {BOOTSTRAP_KEY: x509.key_to_pem(key), BOOTSTRAP_CERT: x509.cert_to_pem(old)}
    )
    store.put_token(TokenRecord("t1", "c2", time.time(), time.time() + 3600, "valid"), b"v" * 32)

    async def main() -> None:
        await renewal.check(start + timedelta(seconds=10))  # 50 s left: not due
        await renewal.check(start + timedelta(seconds=35))  # due, but a valid token pins it
        assert raised == []
        await renewal.check(start + timedelta(seconds=46))  # 14 s left: renewed anyway
        assert raised == ["bootstrap"]

    asyncio.run(main())
    fresh = store.read_file(BOOTSTRAP_CERT)
    assert fresh is not None and x509.fingerprint(fresh) != x509.fingerprint(old)
    assert renewal._bootstrap.fingerprint == x509.fingerprint(fresh)
    bootstrap_key = store.read_file(BOOTSTRAP_KEY)
    assert bootstrap_key is not None
    x509.check_pair(bootstrap_key, fresh)


def test_a_node_trusts_only_ca_bundles_of_its_own_cluster(tmp_path: Path) -> None:
    world = World(tmp_path)
    renewal, store, raised = _renewal(world, tmp_path)
    cluster = world.store.cluster()
    assert cluster is not None
    store.set_cluster(cluster)
    store.write_secrets({CA_CERT: world.ca.cert_pem()})
    stranger = x509.create_ca("fedcba9876543210", datetime.now(UTC))
    new = x509.create_ca(CLUSTER_ID, datetime.now(UTC))

    async def main() -> None:
        with pytest.raises(errors.PermissionDenied, match="not one of cluster"):
            await renewal.trust(new.cert_pem() + stranger.cert_pem(), renew=False)
        with pytest.raises(errors.InvalidArgument, match="unusable"):
            await renewal.trust(b"garbage", renew=False)
        assert store.read_file(CA_CERT) == world.ca.cert_pem()  # nothing changed
        assert raised == []

    asyncio.run(main())


def test_a_ca_rotation_needs_this_controls_cluster_id(tmp_path: Path) -> None:
    from microstackd.control.rotation import Rotation

    world = World(tmp_path)
    rotation = Rotation(world.cluster, world.certificates, Signal("renewed"))

    async def main() -> None:
        for wrong in ("", "fedcba9876543210"):
            with pytest.raises(errors.InvalidArgument, match="nothing was rotated"):
                async for _ in rotation.rotate(wrong):
                    pass

    asyncio.run(main())
    assert world.store.read_file(CA_CERT) == world.ca.cert_pem()
    assert rotation.state() is None


def test_the_crl_is_signed_again_only_when_its_list_its_ca_or_its_age_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives.asymmetric import ec

    from microstackd.control import cluster as cluster_module

    w = World(tmp_path)
    clock = [datetime.now(UTC)]
    monkeypatch.setattr(cluster_module, "now", lambda: clock[0])

    def crl(pem: bytes) -> cx509.CertificateRevocationList:
        parsed = cx509.load_pem_x509_crl(pem)
        key = w.cluster.secrets()[0].cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert parsed.is_signature_valid(key)
        return parsed

    first = w.cluster.revocation_list()
    assert len(crl(first)) == 0
    assert w.cluster.revocation_list() == first  # the same list: no new signature

    serial = format(w.compute.serial, "x")
    w.store.remove_node("c1", serial, time.time())
    revoked = w.cluster.revocation_list()
    assert [r.serial_number for r in crl(revoked)] == [w.compute.serial]

    clock[0] += cluster_module.CRL_REUSE
    aged = w.cluster.revocation_list()
    assert aged != revoked
    assert crl(aged).last_update_utc - crl(revoked).last_update_utc == cluster_module.CRL_REUSE

    clock[0] -= timedelta(minutes=5)  # the clock went back: not a CRL from the future
    assert crl(w.cluster.revocation_list()).last_update_utc <= clock[0]

    new_ca = x509.create_ca(CLUSTER_ID, clock[0])
    w.store.write_secrets({CA_KEY: new_ca.key_pem(), CA_CERT: new_ca.cert_pem()})
    w.cluster.reload_secrets()
    rotated = crl(w.cluster.revocation_list())  # checked against the new CA's key
    assert rotated.issuer == new_ca.cert.subject
    assert [r.serial_number for r in rotated] == [w.compute.serial]
