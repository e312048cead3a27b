"""Adversarial tests for microstackd.security: keys, certificates, the KDF and
the SPAKE2 bootstrap.

Everything runs in memory. The scrypt cost is kept small (log2_n=10) except
in the one test that runs the defaults end to end.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import ssl
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from spake2 import SPAKE2_B

from microstackd import errors
from microstackd.model import Role
from microstackd.trust import exchange, kdf
from microstackd.trust import transcript as tr
from microstackd.trust import x509 as certs
from microstackd.trust.names import dns_key as names_key

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CLUSTER_ID = "3f6c1a52-8d0e-4b7e-9a51-0c2f7d1e9b44"
PASSWORD = "correct horse battery staple"
FAST = kdf.KdfParams(salt=bytes(range(16)), log2_n=10, r=8, p=1)
HELLO = exchange.Hello(node_name="compute-1", address="10.20.0.11", hostname="compute-1.lab")
CONTROL_NAME = "control-1"
CLUSTER_PORT = 7444


# --- shared, expensive-ish material (module scope keeps the suite fast) ----------


@pytest.fixture(scope="module")
def ca() -> certs.CertificateAuthority:
    return certs.create_ca(CLUSTER_ID, NOW)


@pytest.fixture(scope="module")
def other_ca() -> certs.CertificateAuthority:
    # Same cluster id, hence the same subject name: only the key tells them apart.
    return certs.create_ca(CLUSTER_ID, NOW)


@pytest.fixture(scope="module")
def verifier() -> bytes:
    return kdf.derive_verifier(PASSWORD, FAST)


@pytest.fixture(scope="module")
def bootstrap_key() -> ec.EllipticCurvePrivateKey:
    return certs.generate_key()


@pytest.fixture(scope="module")
def bootstrap_cert(bootstrap_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return certs.self_signed_bootstrap_certificate(bootstrap_key, NOW)


@pytest.fixture(scope="module")
def joiner_key() -> ec.EllipticCurvePrivateKey:
    return certs.generate_key()


@pytest.fixture(scope="module")
def csr(joiner_key: ec.EllipticCurvePrivateKey) -> bytes:
    return certs.make_csr(joiner_key, HELLO.node_name)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class World:
    ca: certs.CertificateAuthority
    verifier: bytes
    fp: str  # the control's own bootstrap certificate fingerprint
    csr: bytes
    joiner_key: ec.EllipticCurvePrivateKey


@pytest.fixture
def world(
    ca: certs.CertificateAuthority,
    verifier: bytes,
    bootstrap_cert: x509.Certificate,
    csr: bytes,
    joiner_key: ec.EllipticCurvePrivateKey,
) -> World:
    return World(ca, verifier, certs.fingerprint(bootstrap_cert), csr, joiner_key)


def control_for(
    w: World,
    *,
    verifier: bytes | None = None,
    cluster_id: str = CLUSTER_ID,
    kdf: kdf.KdfParams = FAST,
    hello: exchange.Hello = HELLO,
    fp: str | None = None,
) -> exchange.ControlExchange:
    return exchange.ControlExchange(
        w.verifier if verifier is None else verifier,
        cluster_id,
        kdf,
        hello,
        w.fp if fp is None else fp,
    )


def joiner_for(
    w: World,
    challenge: bytes,
    *,
    verifier: bytes | None = None,
    cluster_id: str = CLUSTER_ID,
    kdf: kdf.KdfParams = FAST,
    hello: exchange.Hello = HELLO,
    fp: str | None = None,
) -> exchange.JoinerExchange:
    return exchange.JoinerExchange(
        w.verifier if verifier is None else verifier,
        cluster_id,
        kdf,
        hello,
        w.fp if fp is None else fp,
        challenge,
    )


def sign(w: World, csr_pem: bytes | None = None) -> x509.Certificate:
    return certs.sign_csr(
        w.ca,
        w.csr if csr_pem is None else csr_pem,
        node_name=HELLO.node_name,
        role=Role.COMPUTE,
        address=HELLO.address,
        hostname=HELLO.hostname,
        now=NOW,
    )


@dataclass
class Confirmed:
    control: exchange.ControlExchange
    joiner: exchange.JoinerExchange
    cert_pem: bytes
    ca_pem: bytes
    result_mac: bytes


def confirmed(w: World) -> Confirmed:
    """Run an honest exchange up to the control's result, not yet checked by the joiner."""
    control = control_for(w)
    joiner = joiner_for(w, control.challenge())
    message, mac = joiner.response(w.csr)
    control.check_response(message, w.csr, mac)
    cert_pem = certs.cert_to_pem(sign(w))
    ca_pem = w.ca.cert_pem()
    result = control.result_confirmation(cert_pem, ca_pem, CONTROL_NAME, CLUSTER_PORT)
    return Confirmed(control, joiner, cert_pem, ca_pem, result)


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    mutable = bytearray(data)
    mutable[index] ^= 1 << bit
    return bytes(mutable)


def rfc5869_hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    """An independent HKDF (empty salt) to check derive_key against."""
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


# --- derive_key ----------------------------------------------------------------------


def test_derive_key_is_hkdf_sha256_with_the_purpose_as_info() -> None:
    secret = bytes(range(32))
    assert tr.derive_key(secret, b"p", 42) == rfc5869_hkdf_sha256(secret, b"p", 42)


def test_derive_key_gives_distinct_keys_per_purpose() -> None:
    purposes = [tr.PURPOSE_CONFIRM_JOINER, tr.PURPOSE_CONFIRM_CONTROL]
    assert len(set(purposes)) == len(purposes)
    secret = b"s" * 32
    keys = {tr.derive_key(secret, purpose) for purpose in purposes}
    assert len(keys) == len(purposes)
    assert all(len(k) == 32 for k in keys)
    # Deterministic, and sensitive to the secret.
    assert tr.derive_key(secret, purposes[0]) == tr.derive_key(secret, purposes[0])
    assert tr.derive_key(b"t" * 32, purposes[0]) != tr.derive_key(secret, purposes[0])
    # A purpose is not a prefix game: "ab" and "abc" are unrelated keys.
    assert tr.derive_key(secret, b"ab")[:16] != tr.derive_key(secret, b"abc")[:16]
    assert len(tr.derive_key(secret, purposes[0], 64)) == 64


@pytest.mark.parametrize(
    ("secret", "purpose", "length"),
    [(b"s" * 32, b"", 32), (b"s" * 32, b"p", 0), (b"s" * 32, b"p", 255 * 32 + 1), (b"", b"p", 32)],
)
def test_derive_key_rejects_misuse(secret: bytes, purpose: bytes, length: int) -> None:
    with pytest.raises(ValueError):
        tr.derive_key(secret, purpose, length)


# --- the password verifier ---------------------------------------------------------------


def test_verifier_is_32_bytes_and_deterministic(verifier: bytes) -> None:
    assert len(verifier) == 32
    assert kdf.derive_verifier(PASSWORD, FAST) == verifier


def test_verifier_depends_on_salt_password_and_cost(verifier: bytes) -> None:
    assert kdf.derive_verifier(PASSWORD, replace(FAST, salt=b"\xff" * 16)) != verifier
    assert kdf.derive_verifier(PASSWORD + "!", FAST) != verifier
    assert kdf.derive_verifier(PASSWORD, replace(FAST, r=1)) != verifier


def test_verifier_is_scrypt_of_the_utf8_password() -> None:
    expected = hashlib.scrypt(
        PASSWORD.encode(), salt=FAST.salt, n=1 << FAST.log2_n, r=FAST.r, p=FAST.p, dklen=32
    )
    assert kdf.derive_verifier(PASSWORD, FAST) == expected


def test_verifier_normalises_unicode() -> None:
    # "é" typed as one code point or as e + combining accent is the same password.
    composed, decomposed = "caf\u00e9-pass", "cafe\u0301-pass"
    assert kdf.derive_verifier(composed, FAST) == kdf.derive_verifier(decomposed, FAST)


def test_empty_password_is_refused() -> None:
    with pytest.raises(errors.InvalidArgument):
        kdf.derive_verifier("", FAST)


def test_new_kdf_params_are_the_defaults_with_a_fresh_salt() -> None:
    a, b = kdf.new_kdf_params(), kdf.new_kdf_params()
    assert (a.log2_n, a.r, a.p) == (15, 8, 1)
    assert len(a.salt) == 16
    assert a.salt != b.salt


@pytest.mark.parametrize(
    "changes",
    [
        {"log2_n": 9},
        {"log2_n": 21},
        {"log2_n": 64},  # would never finish (or exhaust memory) if not refused first
        {"log2_n": -1},
        {"r": 0},
        {"r": 17},
        {"p": 0},
        {"p": 5},
        {"salt": b"\x00" * 15},
        {"salt": b""},
        {"salt": b"\x00" * 4096},
        {"log2_n": True},  # bool is an int subclass; not a cost parameter
        {"log2_n": 14.0},
        {"salt": "not-bytes-but-str"},
        # Each within its own bounds, but together 2 GiB of memory / minutes of CPU.
        {"log2_n": 20, "r": 16},
        {"log2_n": 20, "r": 8, "p": 4},
    ],
)
def test_kdf_parameter_bounds_are_enforced_before_any_work(changes: dict[str, object]) -> None:
    started = time.perf_counter()
    with pytest.raises(errors.BootstrapProtocolError):
        params = replace(FAST, **changes)  # type: ignore[arg-type]
        kdf.derive_verifier(PASSWORD, params)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    "params",
    [
        kdf.KdfParams(salt=b"\x00" * 16, log2_n=10, r=1, p=1),
        kdf.KdfParams(salt=b"\x00" * 64, log2_n=10, r=16, p=4),
    ],
)
def test_kdf_bounds_are_inclusive(params: kdf.KdfParams) -> None:
    assert len(kdf.derive_verifier(PASSWORD, params)) == 32


# --- keys, PEM, fingerprints ----------------------------------------------------------------


def test_key_pem_round_trip_is_unencrypted_pkcs8_p256(
    joiner_key: ec.EllipticCurvePrivateKey,
) -> None:
    pem = certs.key_to_pem(joiner_key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = certs.load_key(pem)
    assert isinstance(loaded.curve, ec.SECP256R1)
    assert loaded.private_numbers() == joiner_key.private_numbers()


def test_load_key_refuses_other_curves_and_algorithms(rsa_key: rsa.RSAPrivateKey) -> None:
    for key in (
        ec.generate_private_key(ec.SECP384R1()),
        rsa_key,
        ed25519.Ed25519PrivateKey.generate(),
    ):
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with pytest.raises(ValueError):
            certs.load_key(pem)
    with pytest.raises(ValueError):
        certs.load_key(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")


def test_fingerprint_is_sha256_of_der_for_cert_pem_bytes_and_str(
    bootstrap_cert: x509.Certificate,
) -> None:
    der = bootstrap_cert.public_bytes(serialization.Encoding.DER)
    expected = hashlib.sha256(der).hexdigest()
    pem = certs.cert_to_pem(bootstrap_cert)
    assert certs.fingerprint(bootstrap_cert) == expected
    assert certs.fingerprint(pem) == expected
    assert certs.fingerprint(pem.decode()) == expected  # what ssl.get_server_certificate returns
    assert certs.load_cert(pem) == bootstrap_cert
    with pytest.raises(ValueError):
        certs.fingerprint(b"garbage")


# --- certificates -------------------------------------------------------------------------


def test_ca_is_a_p256_ca_whose_key_matches(ca: certs.CertificateAuthority) -> None:
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign
    assert isinstance(ca.key.curve, ec.SECP256R1)
    assert ca.cert.public_key() == ca.key.public_key()
    ca.cert.verify_directly_issued_by(ca.cert)
    assert ca.cert.not_valid_before_utc <= NOW < ca.cert.not_valid_after_utc
    assert ca.cert.not_valid_after_utc >= NOW + timedelta(days=3650)
    assert CLUSTER_ID in ca.cert.subject.rfc4514_string()


def test_ca_round_trips_through_pem_and_refuses_a_mismatched_key(
    ca: certs.CertificateAuthority,
) -> None:
    again = certs.CertificateAuthority.from_pem(ca.key_pem(), ca.cert_pem())
    assert again.cert == ca.cert
    with pytest.raises(ValueError):
        certs.CertificateAuthority(key=certs.generate_key(), cert=ca.cert)


def test_issued_certificate_profile(ca: certs.CertificateAuthority) -> None:
    key = certs.generate_key()
    cert = certs.issue_certificate(
        ca,
        key.public_key(),
        node_name="compute-1",
        role=Role.COMPUTE,
        address="10.20.0.11",
        hostname="compute-1.lab",
        now=NOW,
    )
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "compute-1"
    assert (
        cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "compute"
    )
    assert cert.issuer == ca.cert.subject
    assert cert.public_key() == key.public_key()
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)

    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.20.0.11")]
    assert san.get_values_for_type(x509.DNSName) == ["compute-1", "compute-1.lab"]

    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_agreement
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}

    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())

    assert 0 < cert.serial_number < 2**159
    assert cert.not_valid_before_utc <= NOW
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)
    certs.verify_issued_by(ca.cert, cert, NOW)


def test_serials_are_random(ca: certs.CertificateAuthority) -> None:
    key = certs.generate_key().public_key()
    serials = {
        certs.issue_certificate(
            ca, key, node_name="n", role=Role.COMPUTE, address="10.0.0.1", hostname="n", now=NOW
        ).serial_number
        for _ in range(8)
    }
    assert len(serials) == 8
    assert max(serials).bit_length() > 140  # random, not counting up from 1


def test_san_is_the_ip_address_and_the_names_deduplicated(ca: certs.CertificateAuthority) -> None:
    cert = certs.issue_certificate(
        ca,
        certs.generate_key().public_key(),
        node_name="control-1",
        role=Role.CONTROL,
        address="10.20.0.1",
        hostname="CONTROL-1",
        now=NOW,
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.20.0.1")]
    assert [n.lower() for n in san.get_values_for_type(x509.DNSName)] == [
        "control-1",
        certs.CONTROL_SERVER_NAME,
    ]
    v6 = certs.issue_certificate(
        ca,
        certs.generate_key().public_key(),
        node_name="c",
        role=Role.COMPUTE,
        address="fd00::11",
        hostname="c",
        now=NOW,
    )
    v6san = v6.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert v6san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("fd00::11")]


@pytest.mark.parametrize(
    "name", [certs.CONTROL_SERVER_NAME, "MICROSTACKD-CONTROL.", "microstackd-bootstrap"]
)
@pytest.mark.parametrize("field", ["node_name", "hostname"])
def test_only_a_control_certificate_carries_the_name_members_pin(
    ca: certs.CertificateAuthority, name: str, field: str
) -> None:
    """Members dial the control by CONTROL_SERVER_NAME: the CA puts it in the
    control's certificate and refuses it (and the bootstrap name) in any other."""
    args: dict[str, Any] = {
        "node_name": "n",
        "hostname": "n",
        field: names_key(name) if field == "node_name" else name,
    }
    with pytest.raises(errors.InvalidArgument, match="reserved"):
        certs.issue_certificate(
            ca, certs.generate_key().public_key(), role=Role.COMPUTE, address="10.0.0.9",
            now=NOW, **args,
        )  # fmt: skip
    compute = certs.issue_certificate(
        ca, certs.generate_key().public_key(), node_name="n", role=Role.COMPUTE,
        address="10.0.0.9", hostname="n", now=NOW,
    )  # fmt: skip
    assert certs.CONTROL_SERVER_NAME not in certs.dns_names(compute)


def test_leaf_never_outlives_its_ca(ca: certs.CertificateAuthority) -> None:
    cert = certs.issue_certificate(
        ca,
        certs.generate_key().public_key(),
        node_name="n",
        role=Role.COMPUTE,
        address="10.0.0.1",
        hostname="n",
        now=NOW + timedelta(days=3600),
    )
    assert cert.not_valid_after_utc <= ca.cert.not_valid_after_utc


@pytest.mark.parametrize(
    "changes",
    [
        {"role": "admin"},
        {"role": ""},
        {"node_name": ""},
        {"node_name": "bad name"},
        {"node_name": "-leading-dash"},
        {"node_name": "a" * 64},
        {"node_name": "x/../../etc"},
        {"hostname": "host\x00name"},
        {"node_name": "Upper"},
        {"node_name": "compute"},
        {"address": "fe80::1%eth0"},
        {"address": ""},
        {"address": "control-1"},
    ],
)
def test_issue_certificate_refuses_bad_identities(
    ca: certs.CertificateAuthority, changes: dict[str, Any]
) -> None:
    args: dict[str, Any] = {
        "node_name": "n",
        "role": "compute",
        "address": "10.0.0.1",
        "hostname": "n",
    } | changes
    with pytest.raises(errors.InvalidArgument):
        certs.issue_certificate(ca, certs.generate_key().public_key(), now=NOW, **args)


def test_issue_certificate_refuses_non_p256_keys_and_naive_time(
    ca: certs.CertificateAuthority,
) -> None:
    kw: dict[str, Any] = {
        "node_name": "n",
        "role": Role.COMPUTE,
        "address": "10.0.0.1",
        "hostname": "n",
    }
    with pytest.raises(ValueError):
        certs.issue_certificate(
            ca, ec.generate_private_key(ec.SECP384R1()).public_key(), now=NOW, **kw
        )
    with pytest.raises(ValueError):
        certs.issue_certificate(
            ca, certs.generate_key().public_key(), now=NOW.replace(tzinfo=None), **kw
        )


# --- sign_csr: the control decides the identity -------------------------------------------


def test_sign_csr_issues_for_the_csr_key(world: World) -> None:
    cert = sign(world)
    assert cert.public_key() == world.joiner_key.public_key()
    assert certs.identity_of(cert).name == HELLO.node_name


def test_sign_csr_refuses_a_different_cn(world: World) -> None:
    other = certs.make_csr(world.joiner_key, "control-1")
    with pytest.raises(errors.BootstrapProtocolError, match="control-1"):
        sign(world, other)


def test_sign_csr_refuses_an_invalid_signature(world: World) -> None:
    # Same structure, CN changed under the signature: the CN now matches, the signature does not.
    csr = certs.make_csr(world.joiner_key, "compute-0")
    der = x509.load_pem_x509_csr(csr).public_bytes(serialization.Encoding.DER)
    assert der.count(b"compute-0") == 1
    forged = x509.load_der_x509_csr(der.replace(b"compute-0", b"compute-1"))
    forged_pem = forged.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(errors.BootstrapProtocolError, match="signature"):
        sign(world, forged_pem)


def _csr_with(key: object, cn: str = HELLO.node_name) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def test_sign_csr_refuses_non_p256_keys(world: World, rsa_key: rsa.RSAPrivateKey) -> None:
    for key in (
        ec.generate_private_key(ec.SECP384R1()),
        rsa_key,
        ed25519.Ed25519PrivateKey.generate(),
    ):
        with pytest.raises(errors.BootstrapProtocolError, match="P-256"):
            sign(world, _csr_with(key))


@pytest.mark.parametrize(
    "pem",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        b"-----BEGIN CERTIFICATE REQUEST-----\n" + b"A" * (1 << 20) + b"\n",
    ],
)
def test_sign_csr_refuses_garbage(world: World, pem: bytes) -> None:
    with pytest.raises(errors.BootstrapProtocolError):
        sign(world, pem)


def test_sign_csr_refuses_two_common_names(world: World) -> None:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, HELLO.node_name),
                    x509.NameAttribute(NameOID.COMMON_NAME, "control-1"),
                ]
            )
        )
        .sign(world.joiner_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(errors.BootstrapProtocolError):
        sign(world, csr)


def test_sign_csr_ignores_what_the_csr_asks_for(world: World) -> None:
    greedy = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, HELLO.node_name),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "control"),
                ]
            )
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("control-1"), x509.IPAddress(ipaddress.ip_address("10.20.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(world.joiner_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    cert = sign(world, greedy)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "control-1" not in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("10.20.0.1") not in san.get_values_for_type(x509.IPAddress)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certs.identity_of(cert).role == Role.COMPUTE


# --- identity_of / verify_issued_by ------------------------------------------------------------


def test_identity_of_reads_back_what_was_issued(world: World) -> None:
    cert = sign(world)
    identity = certs.identity_of(cert)
    assert identity == certs.Identity(
        name=HELLO.node_name,
        role=Role.COMPUTE,
        serial=cert.serial_number,
        not_after=NOW + timedelta(days=365),
        not_before=NOW - certs.CLOCK_SKEW,
    )
    assert identity.not_after.tzinfo is not None


def test_identity_of_refuses_certificates_without_a_node_identity(
    ca: certs.CertificateAuthority, bootstrap_cert: x509.Certificate
) -> None:
    for cert in (ca.cert, bootstrap_cert):
        with pytest.raises(errors.PermissionDenied):
            certs.identity_of(cert)


def test_verify_issued_by_refuses_another_ca(
    world: World, other_ca: certs.CertificateAuthority
) -> None:
    cert = sign(world)
    assert other_ca.cert.subject == world.ca.cert.subject  # same name, different key
    with pytest.raises(errors.PermissionDenied):
        certs.verify_issued_by(other_ca.cert, cert, NOW)
    foreign = sign(replace(world, ca=other_ca))
    with pytest.raises(errors.PermissionDenied):
        certs.verify_issued_by(world.ca.cert, foreign, NOW)


@pytest.mark.parametrize(
    ("at", "match"),
    [
        (NOW + timedelta(days=365, seconds=1), "expired"),
        (NOW + timedelta(days=5000), "expired"),
        (NOW - timedelta(hours=1), "not valid yet"),
    ],
)
def test_verify_issued_by_refuses_outside_validity(world: World, at: datetime, match: str) -> None:
    cert = sign(world)
    certs.verify_issued_by(world.ca.cert, cert, NOW + timedelta(days=365))  # the last valid moment
    certs.verify_issued_by(world.ca.cert, cert, NOW - timedelta(minutes=5))  # clock skew allowance
    with pytest.raises(errors.PermissionDenied, match=match):
        certs.verify_issued_by(world.ca.cert, cert, at)


def test_verify_issued_by_refuses_the_ca_itself_and_the_bootstrap_cert(
    ca: certs.CertificateAuthority, bootstrap_cert: x509.Certificate
) -> None:
    with pytest.raises(errors.PermissionDenied):
        certs.verify_issued_by(ca.cert, ca.cert, NOW)
    with pytest.raises(errors.PermissionDenied):
        certs.verify_issued_by(ca.cert, bootstrap_cert, NOW)


def test_verify_issued_by_refuses_a_cert_a_node_signed_in_the_cas_name(world: World) -> None:
    node_key = world.joiner_key
    forged = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "control"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "control-1"),
                ]
            )
        )
        .issuer_name(world.ca.cert.subject)
        .public_key(node_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(node_key, hashes.SHA256())
    )
    with pytest.raises(errors.PermissionDenied):
        certs.verify_issued_by(world.ca.cert, forged, NOW)


def test_verify_issued_by_wants_an_aware_time(world: World) -> None:
    with pytest.raises(ValueError):
        certs.verify_issued_by(world.ca.cert, sign(world), NOW.replace(tzinfo=None))


# --- TLS: the certificates work in a real (in-memory) handshake -----------------------------


def _pem_files(
    tmp_path: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> tuple[str, str]:
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_bytes(certs.cert_to_pem(cert))
    key_file.write_bytes(certs.key_to_pem(key))
    return str(cert_file), str(key_file)


def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for label, end in (("client", client), ("server", server)):
            if not done[label]:
                try:
                    end.do_handshake()
                    done[label] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server checks the client's certificate after the client is
            # done; a read on the server raises if that check failed.
            with pytest.raises(ssl.SSLWantReadError):
                server.read(1)
            return client, server
    raise AssertionError("handshake did not finish")


def test_bootstrap_certificate_is_its_own_trust_root(
    tmp_path: Path, bootstrap_cert: x509.Certificate
) -> None:
    name = bootstrap_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert name == certs.BOOTSTRAP_SERVER_NAME == "microstackd-bootstrap"
    san = bootstrap_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [certs.BOOTSTRAP_SERVER_NAME]
    bc = bootstrap_cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    bootstrap_cert.verify_directly_issued_by(bootstrap_cert)

    # OpenSSL checks validity against the real clock: issue at the real time.
    wall = datetime.now(UTC)
    key = certs.generate_key()
    cert = certs.self_signed_bootstrap_certificate(key, wall)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*_pem_files(tmp_path, "boot", key, cert))
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and host name
    client_ctx.load_verify_locations(cadata=certs.cert_to_pem(cert).decode())
    client, _ = _handshake(server_ctx, client_ctx, certs.BOOTSTRAP_SERVER_NAME)
    seen = client.getpeercert(binary_form=True)
    assert seen is not None
    assert certs.fingerprint(x509.load_der_x509_certificate(seen)) == certs.fingerprint(cert)

    # A machine in the middle with its own bootstrap certificate fails a pinned client.
    mitm_key = certs.generate_key()
    mitm_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    mitm_cert = certs.self_signed_bootstrap_certificate(mitm_key, wall)
    mitm_ctx.load_cert_chain(*_pem_files(tmp_path, "mitm", mitm_key, mitm_cert))
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(mitm_ctx, client_ctx, certs.BOOTSTRAP_SERVER_NAME)


def test_issued_certificates_work_for_mutual_tls_by_ip(tmp_path: Path) -> None:
    wall = datetime.now(UTC)  # OpenSSL checks validity against the real clock
    ca, other_ca = certs.create_ca(CLUSTER_ID, wall), certs.create_ca(CLUSTER_ID, wall)

    def node(
        ca_: certs.CertificateAuthority, name: str, role: Role, address: str
    ) -> tuple[str, str]:
        key = certs.generate_key()
        cert = certs.issue_certificate(
            ca_,
            key.public_key(),
            node_name=name,
            role=role,
            address=address,
            hostname=name,
            now=wall,
        )
        return _pem_files(tmp_path, f"{name}-{id(ca_)}", key, cert)

    ca_pem = ca.cert_pem().decode()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*node(ca, "control-1", Role.CONTROL, "10.20.0.1"))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cadata=ca_pem)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cadata=ca_pem)
    client_ctx.load_cert_chain(*node(ca, "compute-1", Role.COMPUTE, "10.20.0.11"))
    _, server = _handshake(server_ctx, client_ctx, "10.20.0.1")
    peer = server.getpeercert(binary_form=True)
    assert peer is not None
    assert certs.identity_of(x509.load_der_x509_certificate(peer)).name == "compute-1"

    # The server's certificate names its IP: dialling another address fails.
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(server_ctx, client_ctx, "10.20.0.2")

    # A client whose certificate comes from another CA is refused by the server.
    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    stranger.load_verify_locations(cadata=ca_pem)
    stranger.load_cert_chain(*node(other_ca, "compute-1", Role.COMPUTE, "10.20.0.11"))
    with pytest.raises(ssl.SSLError):
        _handshake(server_ctx, stranger, "10.20.0.1")


# --- hello --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"node_name": ""},
        {"node_name": "two words"},
        {"node_name": "n\n"},
        {"address": "not an address!"},
        {"hostname": "a" * 300},
    ],
)
def test_hello_refuses_malformed_fields(changes: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidArgument):
        replace(HELLO, **changes)


def test_exchanges_refuse_an_unknown_protocol_version(world: World) -> None:
    future = replace(HELLO, version=2)
    with pytest.raises(errors.BootstrapProtocolError, match="version"):
        control_for(world, hello=future)
    challenge = control_for(world).challenge()
    with pytest.raises(errors.BootstrapProtocolError, match="version"):
        joiner_for(world, challenge, hello=future)


def test_exchanges_check_their_local_inputs(world: World) -> None:
    with pytest.raises(ValueError):
        control_for(world, verifier=b"short")
    with pytest.raises(ValueError):
        control_for(world, fp="not-a-fingerprint")
    challenge = control_for(world).challenge()
    with pytest.raises(ValueError):
        joiner_for(world, challenge, fp="ab" * 31)


# --- the bootstrap exchange -------------------------------------------------------------------


def test_full_bootstrap_succeeds(world: World) -> None:
    control = control_for(world)
    challenge = control.challenge()
    joiner = joiner_for(world, challenge)
    message, mac = joiner.response(world.csr)
    assert world.verifier not in challenge + message + mac
    control.check_response(message, world.csr, mac)

    cert = sign(world)
    cert_pem, ca_pem = certs.cert_to_pem(cert), world.ca.cert_pem()
    result = control.result_confirmation(cert_pem, ca_pem, CONTROL_NAME, CLUSTER_PORT)
    joiner.check_result(cert_pem, ca_pem, CONTROL_NAME, CLUSTER_PORT, result)

    received = certs.load_cert(cert_pem)
    pinned_ca = certs.load_cert(ca_pem)
    certs.verify_issued_by(pinned_ca, received, NOW)
    identity = certs.identity_of(received)
    assert (identity.name, identity.role, identity.serial) == (
        HELLO.node_name,
        Role.COMPUTE,
        cert.serial_number,
    )
    assert received.public_key() == world.joiner_key.public_key()


def test_full_bootstrap_with_default_kdf_params(
    ca: certs.CertificateAuthority, bootstrap_cert: x509.Certificate
) -> None:
    # The control stores the verifier at init; the joiner derives it from the typed password.
    stored = kdf.new_kdf_params()
    stored_verifier = kdf.derive_verifier(PASSWORD, stored)
    control = exchange.ControlExchange(
        stored_verifier, CLUSTER_ID, stored, HELLO, certs.fingerprint(bootstrap_cert)
    )
    challenge = control.challenge()
    # The joiner receives (salt, params, challenge) and the certificate it saw over TLS.
    received = kdf.KdfParams(stored.salt, stored.log2_n, stored.r, stored.p)
    joiner_key = certs.generate_key()
    csr = certs.make_csr(joiner_key, HELLO.node_name)
    joiner = exchange.JoinerExchange(
        kdf.derive_verifier(PASSWORD, received),
        CLUSTER_ID,
        received,
        HELLO,
        certs.fingerprint(certs.cert_to_pem(bootstrap_cert)),
        challenge,
    )
    message, mac = joiner.response(csr)
    control.check_response(message, csr, mac)
    cert = certs.sign_csr(
        ca,
        csr,
        node_name=HELLO.node_name,
        role=Role.COMPUTE,
        address=HELLO.address,
        hostname=HELLO.hostname,
        now=NOW,
    )
    cert_pem = certs.cert_to_pem(cert)
    result = control.result_confirmation(cert_pem, ca.cert_pem(), CONTROL_NAME, CLUSTER_PORT)
    joiner.check_result(cert_pem, ca.cert_pem(), CONTROL_NAME, CLUSTER_PORT, result)
    certs.verify_issued_by(ca.cert, cert, NOW)


def test_wrong_password_is_refused_by_the_control(world: World) -> None:
    control = control_for(world)
    joiner = joiner_for(world, control.challenge(), verifier=kdf.derive_verifier("guess", FAST))
    message, mac = joiner.response(world.csr)
    with pytest.raises(errors.WrongPassword):
        control.check_response(message, world.csr, mac)


def _fake_control_result(
    w: World, fake_verifier: bytes, fp: str, seen_fp: str | None = None
) -> tuple[exchange.JoinerExchange, bytes, bytes, bytes]:
    """A fake control that does not know the password but plays the protocol to the end:
    it runs SPAKE2 with its own guess and MACs a result of its choosing with the key it got."""
    fake = SPAKE2_B(fake_verifier, idA=HELLO.node_name.encode(), idB=CLUSTER_ID.encode())
    challenge = fake.start()
    joiner = joiner_for(w, challenge, fp=fp if seen_fp is None else seen_fp)
    message, _ = joiner.response(w.csr)
    key = fake.finish(message)
    transcript = tr.bootstrap_transcript(
        cluster_id=CLUSTER_ID,
        hello=HELLO,
        kdf=FAST,
        joiner_message=message,
        control_message=challenge,
        fingerprint=fp,
        csr_pem=w.csr,
    )
    fake_ca = certs.create_ca(CLUSTER_ID, NOW)
    cert_pem = certs.cert_to_pem(sign(replace(w, ca=fake_ca)))
    mac = tr.control_confirmation(
        key, transcript, cert_pem, fake_ca.cert_pem(), CONTROL_NAME, CLUSTER_PORT
    )
    return joiner, cert_pem, fake_ca.cert_pem(), mac


def test_fake_control_with_another_verifier_is_refused_by_the_joiner(world: World) -> None:
    joiner, cert_pem, ca_pem, mac = _fake_control_result(
        world, kdf.derive_verifier("not the password", FAST), world.fp
    )
    with pytest.raises(errors.PeerAuthenticationFailed):
        joiner.check_result(cert_pem, ca_pem, CONTROL_NAME, CLUSTER_PORT, mac)


def test_the_fake_control_harness_is_sound(world: World) -> None:
    # With the right verifier the same forgery would pass: the refusal above is the password.
    joiner, cert_pem, ca_pem, mac = _fake_control_result(world, world.verifier, world.fp)
    joiner.check_result(cert_pem, ca_pem, CONTROL_NAME, CLUSTER_PORT, mac)


def test_man_in_the_middle_relaying_faithfully_fails(world: World) -> None:
    # The MITM terminates TLS with its own certificate: the joiner saw that one.
    mitm_fp = certs.fingerprint(certs.self_signed_bootstrap_certificate(certs.generate_key(), NOW))
    control = control_for(world)  # knows its own certificate
    joiner = joiner_for(world, control.challenge(), fp=mitm_fp)  # relayed verbatim
    message, mac = joiner.response(world.csr)
    with pytest.raises(errors.WrongPassword, match="middle"):
        control.check_response(message, world.csr, mac)  # relayed verbatim


def test_joiner_checks_the_fingerprint_in_the_result(world: World) -> None:
    # A control that knows the password, but confirms a different bootstrap certificate than
    # the one the joiner saw (it was talking to the joiner through a MITM), is refused.
    mitm_fp = certs.fingerprint(certs.self_signed_bootstrap_certificate(certs.generate_key(), NOW))
    joiner, cert_pem, ca_pem, mac = _fake_control_result(
        world, world.verifier, world.fp, seen_fp=mitm_fp
    )
    with pytest.raises(errors.PeerAuthenticationFailed):
        joiner.check_result(cert_pem, ca_pem, CONTROL_NAME, CLUSTER_PORT, mac)


@pytest.mark.parametrize(
    ("kwargs", "label"),
    [
        ({"hello": replace(HELLO, node_name="control-1")}, "node name"),
        ({"hello": replace(HELLO, address="10.20.0.99")}, "address"),
        ({"hello": replace(HELLO, hostname="elsewhere")}, "hostname"),
        ({"cluster_id": "another-cluster"}, "cluster id"),
        ({"kdf": replace(FAST, salt=b"\x07" * 16)}, "salt"),
        ({"kdf": replace(FAST, r=4)}, "cost"),
    ],
)
def test_everything_the_sides_disagree_on_fails_confirmation(
    world: World, kwargs: dict[str, object], label: str
) -> None:
    # The joiner's view differs in one bound field (rewritten by a MITM), same verifier.
    control = control_for(world)
    joiner = joiner_for(world, control.challenge(), **kwargs)  # type: ignore[arg-type]
    message, mac = joiner.response(world.csr)
    with pytest.raises(errors.WrongPassword):
        control.check_response(message, world.csr, mac)


@pytest.mark.parametrize(("index", "bit"), [(0, 0), (1, 0), (5, 3), (17, 6), (32, 7)])
def test_tampered_joiner_pake_message_fails(world: World, index: int, bit: int) -> None:
    control = control_for(world)
    joiner = joiner_for(world, control.challenge())
    message, mac = joiner.response(world.csr)
    with pytest.raises((errors.WrongPassword, errors.BootstrapProtocolError)):
        control.check_response(flip(message, index, bit), world.csr, mac)


@pytest.mark.parametrize(("index", "bit"), [(0, 0), (1, 0), (20, 2), (32, 7)])
def test_tampered_control_challenge_fails(world: World, index: int, bit: int) -> None:
    control = control_for(world)
    challenge = flip(control.challenge(), index, bit)
    with pytest.raises((errors.WrongPassword, errors.BootstrapProtocolError)):
        joiner = joiner_for(world, challenge)
        message, mac = joiner.response(world.csr)
        control.check_response(message, world.csr, mac)


@pytest.mark.parametrize("where", [0.0, 0.5, 0.99])
def test_tampered_csr_fails(world: World, where: float) -> None:
    control = control_for(world)
    joiner = joiner_for(world, control.challenge())
    message, mac = joiner.response(world.csr)
    with pytest.raises(errors.WrongPassword):
        control.check_response(message, flip(world.csr, int(len(world.csr) * where)), mac)


def test_substituted_csr_fails(world: World) -> None:
    # A MITM swaps in a CSR for its own key, with the right CN.
    control = control_for(world)
    joiner = joiner_for(world, control.challenge())
    message, mac = joiner.response(world.csr)
    evil = certs.make_csr(certs.generate_key(), HELLO.node_name)
    with pytest.raises(errors.WrongPassword):
        control.check_response(message, evil, mac)


@pytest.mark.parametrize(("index", "bit"), [(0, 0), (15, 4), (31, 7)])
def test_tampered_joiner_confirmation_fails(world: World, index: int, bit: int) -> None:
    control = control_for(world)
    joiner = joiner_for(world, control.challenge())
    message, mac = joiner.response(world.csr)
    with pytest.raises(errors.WrongPassword):
        control.check_response(message, world.csr, flip(mac, index, bit))


@pytest.mark.parametrize("mac", [b"", b"\x00" * 31, b"\x00" * 33])
def test_malformed_joiner_confirmation_fails(world: World, mac: bytes) -> None:
    control = control_for(world)
    joiner = joiner_for(world, control.challenge())
    message, _ = joiner.response(world.csr)
    with pytest.raises(errors.BootstrapProtocolError):
        control.check_response(message, world.csr, mac)


@pytest.mark.parametrize("field", ["cert", "ca", "control_name", "port", "mac"])
def test_tampered_result_fails(world: World, field: str) -> None:
    c = confirmed(world)
    cert_pem, ca_pem, name, port, mac = (
        c.cert_pem,
        c.ca_pem,
        CONTROL_NAME,
        CLUSTER_PORT,
        c.result_mac,
    )
    if field == "cert":
        cert_pem = flip(cert_pem, len(cert_pem) // 2)
    elif field == "ca":
        ca_pem = flip(ca_pem, len(ca_pem) // 2)
    elif field == "control_name":
        name = "control-2"
    elif field == "port":
        port ^= 1
    else:
        mac = flip(mac, 7)
    with pytest.raises(errors.PeerAuthenticationFailed):
        c.joiner.check_result(cert_pem, ca_pem, name, port, mac)
    # The exchange is spent: even the genuine result is no longer accepted.
    with pytest.raises(errors.BootstrapProtocolError):
        c.joiner.check_result(c.cert_pem, c.ca_pem, CONTROL_NAME, CLUSTER_PORT, c.result_mac)


@pytest.mark.parametrize("port", [0, -1, 65536, 1 << 70])
def test_out_of_range_port_in_the_result_fails(world: World, port: int) -> None:
    c = confirmed(world)
    with pytest.raises((errors.BootstrapProtocolError, errors.PeerAuthenticationFailed)):
        c.joiner.check_result(c.cert_pem, c.ca_pem, CONTROL_NAME, port, c.result_mac)


@pytest.mark.parametrize("port", [0, 65536])
def test_control_refuses_to_confirm_an_out_of_range_port(world: World, port: int) -> None:
    control = control_for(world)
    joiner = joiner_for(world, control.challenge())
    message, mac = joiner.response(world.csr)
    control.check_response(message, world.csr, mac)
    with pytest.raises(ValueError):
        control.result_confirmation(b"cert", b"ca", CONTROL_NAME, port)


def test_joiner_confirmation_reflected_as_the_result_fails(world: World) -> None:
    control = control_for(world)
    joiner = joiner_for(world, control.challenge())
    message, mac = joiner.response(world.csr)
    control.check_response(message, world.csr, mac)
    cert_pem = certs.cert_to_pem(sign(world))
    with pytest.raises(errors.PeerAuthenticationFailed):
        joiner.check_result(cert_pem, world.ca.cert_pem(), CONTROL_NAME, CLUSTER_PORT, mac)


def test_replayed_response_fails_against_a_fresh_control(world: World) -> None:
    earlier = control_for(world)
    joiner = joiner_for(world, earlier.challenge())
    message, mac = joiner.response(world.csr)
    earlier.check_response(message, world.csr, mac)  # the recorded session succeeded

    fresh = control_for(world)
    fresh.challenge()
    with pytest.raises(errors.WrongPassword):
        fresh.check_response(message, world.csr, mac)


def test_replayed_result_fails_against_a_fresh_joiner(world: World) -> None:
    earlier = confirmed(world)
    later = control_for(world)
    joiner = joiner_for(world, later.challenge())
    joiner.response(world.csr)
    with pytest.raises(errors.PeerAuthenticationFailed):
        joiner.check_result(
            earlier.cert_pem, earlier.ca_pem, CONTROL_NAME, CLUSTER_PORT, earlier.result_mac
        )


def test_reflected_challenge_is_refused(world: World) -> None:
    for relabel in (False, True):
        control = control_for(world)
        challenge = control.challenge()
        reflected = b"A" + challenge[1:] if relabel else challenge
        with pytest.raises(errors.BootstrapProtocolError):
            control.check_response(reflected, world.csr, b"\x00" * 32)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"A",
        b"A" + b"\x00" * 31,
        b"A" + b"\x00" * 33,
        b"A" + b"\x01" + b"\x00" * 31,  # the identity element
        b"A" + b"\x00" * 32,  # the all-zero encoding
        b"A" + b"\xff" * 32,
        b"S" + b"\x01" * 32,
        b"A" + bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    ],
)
def test_malformed_or_small_order_pake_messages_are_refused(world: World, message: bytes) -> None:
    control = control_for(world)
    control.challenge()
    with pytest.raises(errors.BootstrapProtocolError):
        control.check_response(message, world.csr, b"\x00" * 32)
    with pytest.raises(errors.BootstrapProtocolError):
        joiner_for(world, b"B" + message[1:] if message[:1] == b"A" else message)


def test_joiner_refuses_a_challenge_from_its_own_side(world: World) -> None:
    challenge = control_for(world).challenge()
    with pytest.raises(errors.BootstrapProtocolError):
        joiner_for(world, b"A" + challenge[1:])


# --- order and once-only ---------------------------------------------------------------------


def test_control_refuses_out_of_order_and_repeated_calls(world: World) -> None:
    control = control_for(world)
    with pytest.raises(errors.BootstrapProtocolError):
        control.check_response(b"A" + b"\x00" * 32, world.csr, b"\x00" * 32)

    control = control_for(world)
    with pytest.raises(errors.BootstrapProtocolError):
        control.result_confirmation(b"cert", b"ca", CONTROL_NAME, CLUSTER_PORT)

    control = control_for(world)
    challenge = control.challenge()
    with pytest.raises(errors.BootstrapProtocolError):
        control.challenge()

    control = control_for(world)
    challenge = control.challenge()
    with pytest.raises(errors.BootstrapProtocolError):
        control.result_confirmation(b"cert", b"ca", CONTROL_NAME, CLUSTER_PORT)

    # A repeated response is refused, and spends the exchange: no result follows it.
    control = control_for(world)
    joiner = joiner_for(world, control.challenge())
    message, mac = joiner.response(world.csr)
    control.check_response(message, world.csr, mac)
    with pytest.raises(errors.BootstrapProtocolError):
        control.check_response(message, world.csr, mac)
    with pytest.raises(errors.BootstrapProtocolError):
        control.result_confirmation(b"cert", b"ca", CONTROL_NAME, CLUSTER_PORT)

    control = control_for(world)
    joiner = joiner_for(world, control.challenge())
    message, mac = joiner.response(world.csr)
    control.check_response(message, world.csr, mac)
    control.result_confirmation(b"cert", b"ca", CONTROL_NAME, CLUSTER_PORT)
    with pytest.raises(errors.BootstrapProtocolError):
        control.result_confirmation(b"cert", b"ca", CONTROL_NAME, CLUSTER_PORT)
    with pytest.raises(errors.BootstrapProtocolError):
        control.challenge()
    del challenge


def test_control_gives_one_guess_per_exchange(world: World) -> None:
    control = control_for(world)
    challenge = control.challenge()
    wrong = joiner_for(world, challenge, verifier=kdf.derive_verifier("guess 1", FAST))
    message, mac = wrong.response(world.csr)
    with pytest.raises(errors.WrongPassword):
        control.check_response(message, world.csr, mac)
    # The right answer to the same challenge is no longer accepted: no second guess.
    right = joiner_for(world, challenge)
    message, mac = right.response(world.csr)
    with pytest.raises(errors.BootstrapProtocolError):
        control.check_response(message, world.csr, mac)
    with pytest.raises(errors.BootstrapProtocolError):
        control.result_confirmation(b"cert", b"ca", CONTROL_NAME, CLUSTER_PORT)


def test_control_is_spent_after_a_malformed_message(world: World) -> None:
    control = control_for(world)
    challenge = control.challenge()
    with pytest.raises(errors.BootstrapProtocolError):
        control.check_response(b"garbage", world.csr, b"\x00" * 32)
    message, mac = joiner_for(world, challenge).response(world.csr)
    with pytest.raises(errors.BootstrapProtocolError):
        control.check_response(message, world.csr, mac)


def test_joiner_refuses_out_of_order_and_repeated_calls(world: World) -> None:
    control = control_for(world)
    joiner = joiner_for(world, control.challenge())
    with pytest.raises(errors.BootstrapProtocolError):
        joiner.check_result(b"cert", b"ca", CONTROL_NAME, CLUSTER_PORT, b"\x00" * 32)
    with pytest.raises(errors.BootstrapProtocolError):  # spent by the out-of-order call
        joiner.response(world.csr)

    c = confirmed(world)  # a repeated response() spends the exchange
    with pytest.raises(errors.BootstrapProtocolError):
        c.joiner.response(world.csr)
    with pytest.raises(errors.BootstrapProtocolError):
        c.joiner.check_result(c.cert_pem, c.ca_pem, CONTROL_NAME, CLUSTER_PORT, c.result_mac)

    c = confirmed(world)
    c.joiner.check_result(c.cert_pem, c.ca_pem, CONTROL_NAME, CLUSTER_PORT, c.result_mac)
    with pytest.raises(errors.BootstrapProtocolError):
        c.joiner.check_result(c.cert_pem, c.ca_pem, CONTROL_NAME, CLUSTER_PORT, c.result_mac)
    with pytest.raises(errors.BootstrapProtocolError):
        c.joiner.response(world.csr)


def test_joiner_refuses_a_confirmed_result_for_someone_elses_key(world: World) -> None:
    # A buggy (but genuine) control MACs a certificate that is not for the joiner's key.
    control = control_for(world)
    joiner = joiner_for(world, control.challenge())
    message, mac = joiner.response(world.csr)
    control.check_response(message, world.csr, mac)
    wrong_cert = certs.cert_to_pem(
        sign(world, certs.make_csr(certs.generate_key(), HELLO.node_name))
    )
    ca_pem = world.ca.cert_pem()
    result = control.result_confirmation(wrong_cert, ca_pem, CONTROL_NAME, CLUSTER_PORT)
    with pytest.raises(errors.BootstrapProtocolError, match="key"):
        joiner.check_result(wrong_cert, ca_pem, CONTROL_NAME, CLUSTER_PORT, result)


def test_joiner_refuses_a_confirmed_result_not_signed_by_the_ca(
    world: World, other_ca: certs.CertificateAuthority
) -> None:
    control = control_for(world)
    joiner = joiner_for(world, control.challenge())
    message, mac = joiner.response(world.csr)
    control.check_response(message, world.csr, mac)
    cert_pem = certs.cert_to_pem(sign(world))
    ca_pem = other_ca.cert_pem()
    result = control.result_confirmation(cert_pem, ca_pem, CONTROL_NAME, CLUSTER_PORT)
    with pytest.raises(errors.BootstrapProtocolError, match="CA"):
        joiner.check_result(cert_pem, ca_pem, CONTROL_NAME, CLUSTER_PORT, result)


# --- the transcript is unambiguous ---------------------------------------------------------------


def test_transcript_field_boundaries_cannot_shift() -> None:
    def transcript(hello: exchange.Hello, cluster_id: str = CLUSTER_ID) -> bytes:
        return tr.bootstrap_transcript(
            cluster_id=cluster_id,
            hello=hello,
            kdf=FAST,
            joiner_message=b"A" * 33,
            control_message=b"B" * 33,
            fingerprint="ab" * 32,
            csr_pem=b"csr",
        )

    a = transcript(exchange.Hello(node_name="n1", address="1.0.0.1", hostname="e"))
    b = transcript(exchange.Hello(node_name="n", address="11.0.0.1", hostname="e"))
    c = transcript(exchange.Hello(node_name="n1", address="1.0.0.11", hostname="e"))
    d = transcript(exchange.Hello(node_name="n1", address="1.0.0.1", hostname="1e"))
    assert len({a, b, c, d}) == 4
    assert transcript(HELLO, "x") != transcript(HELLO, "y")


def test_fingerprint_case_does_not_matter_but_content_does(world: World) -> None:
    control = control_for(world)
    joiner = joiner_for(world, control.challenge(), fp=world.fp.upper())
    message, mac = joiner.response(world.csr)
    control.check_response(message, world.csr, mac)
    # One hex digit different: another certificate, and the confirmation fails.
    other = ("0" if world.fp[0] != "0" else "1") + world.fp[1:]
    control = control_for(world)
    joiner = joiner_for(world, control.challenge(), fp=other)
    message, mac = joiner.response(world.csr)
    with pytest.raises(errors.WrongPassword):
        control.check_response(message, world.csr, mac)


def test_confirmations_follow_the_documented_construction(world: World) -> None:
    """Pin the wire construction, computed independently of the module: HMAC-SHA256 under
    HKDF(spake_key, PURPOSE_...) over 4-byte-length-prefixed fields (integers 8-byte)."""

    def frame(*fields: bytes) -> bytes:
        return b"".join(len(f).to_bytes(4, "big") + f for f in fields)

    def u64(value: int) -> bytes:
        return value.to_bytes(8, "big")

    control = SPAKE2_B(world.verifier, idA=HELLO.node_name.encode(), idB=CLUSTER_ID.encode())
    challenge = control.start()
    joiner = joiner_for(world, challenge)
    message, mac = joiner.response(world.csr)
    spake_key = control.finish(message)
    transcript = frame(
        b"microstackd bootstrap transcript v1",
        u64(1),
        CLUSTER_ID.encode(),
        HELLO.node_name.encode(),
        HELLO.address.encode(),
        HELLO.hostname.encode(),
        FAST.salt,
        u64(FAST.log2_n),
        u64(FAST.r),
        u64(FAST.p),
        message,
        challenge,
        world.fp.encode(),
        world.csr,
    )
    joiner_key = rfc5869_hkdf_sha256(spake_key, tr.PURPOSE_CONFIRM_JOINER, 32)
    assert mac == hmac.new(joiner_key, transcript, hashlib.sha256).digest()

    cert_pem, ca_pem = certs.cert_to_pem(sign(world)), world.ca.cert_pem()
    result = frame(
        b"microstackd bootstrap result v1",
        transcript,
        cert_pem,
        ca_pem,
        CONTROL_NAME.encode(),
        u64(CLUSTER_PORT),
    )
    control_key = rfc5869_hkdf_sha256(spake_key, tr.PURPOSE_CONFIRM_CONTROL, 32)
    assert control_key != joiner_key
    joiner.check_result(
        cert_pem,
        ca_pem,
        CONTROL_NAME,
        CLUSTER_PORT,
        hmac.new(control_key, result, hashlib.sha256).digest(),
    )
