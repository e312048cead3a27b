"""trust.der: the certificate fields an idle daemon reads, without
cryptography. Each rule of the module's docstring has its adversarial
tests: what it reads must equal what cryptography reads, and anything that
is not strict DER is ``ValueError`` (never another exception, never a
certificate)."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from microstackd.model import Role
from microstackd.trust import der
from microstackd.trust import x509 as certs

NOW = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
CLUSTER_ID = "c0ffee00c0ffee00"


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def ca() -> certs.CertificateAuthority:
    return certs.create_ca(CLUSTER_ID, NOW)


@pytest.fixture(scope="module")
def node(ca: certs.CertificateAuthority) -> x509.Certificate:
    return certs.issue_certificate(
        ca,
        certs.generate_key().public_key(),
        node_name="compute-1",
        role=Role.COMPUTE,
        address="10.20.0.11",
        hostname="compute-1.lab",
        now=NOW,
    )


def _made_elsewhere(
    *,
    key: object | None = None,
    not_before: datetime = NOW,
    not_after: datetime = NOW + timedelta(days=30),
    ca: bool | None = None,
    subject: list[x509.NameAttribute[str]] | None = None,
) -> x509.Certificate:
    signer = ec.generate_private_key(ec.SECP256R1())
    public = key if key is not None else signer.public_key()
    name = x509.Name(subject or [x509.NameAttribute(NameOID.COMMON_NAME, "elsewhere")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    return builder.sign(signer, hashes.SHA256())


def _same(read: der.Certificate, cert: x509.Certificate) -> None:
    assert read.der == _der(cert)
    assert read.serial_number == cert.serial_number
    assert read.not_valid_before_utc == cert.not_valid_before_utc
    assert read.not_valid_after_utc == cert.not_valid_after_utc
    assert read.subject == tuple((a.oid.dotted_string, a.value) for a in cert.subject)
    assert read.ca == certs.is_ca(cert)
    assert read.fingerprint == certs.fingerprint(cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        dns = ()
    assert read.dns_names == dns


# --- it reads what cryptography reads -----------------------------------------------------------


def test_reads_a_node_certificate_as_cryptography_does(node: x509.Certificate) -> None:
    read = der.read_pem(_pem(node))
    _same(read, node)
    assert read.subject_values(der.COMMON_NAME) == ["compute-1"]
    assert read.subject_values(der.ORGANIZATIONAL_UNIT) == ["compute"]
    assert read.p256 and not read.ca
    assert "compute-1" in read.dns_names and "compute-1.lab" in read.dns_names


def test_reads_the_cluster_ca_and_the_bootstrap_certificate(
    ca: certs.CertificateAuthority,
) -> None:
    read = der.read_pem(ca.cert_pem())
    _same(read, ca.cert)
    assert read.ca and read.p256
    assert read.subject_values(der.ORGANIZATIONAL_UNIT) == [CLUSTER_ID]
    bootstrap = certs.self_signed_bootstrap_certificate(certs.generate_key(), NOW)
    _same(der.read_pem(_pem(bootstrap)), bootstrap)


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [
        (datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2049, 12, 31, tzinfo=UTC)),
        (datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2050, 1, 1, tzinfo=UTC)),
        (datetime(1950, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_both_time_forms_either_side_of_2050(not_before: datetime, not_after: datetime) -> None:
    cert = _made_elsewhere(not_before=not_before, not_after=not_after)
    _same(der.read_der(_der(cert)), cert)


def test_another_key_type_is_read_as_not_p256() -> None:
    rsa_cert = _made_elsewhere(key=rsa.generate_private_key(65537, 2048).public_key())
    p384 = _made_elsewhere(key=ec.generate_private_key(ec.SECP384R1()).public_key())
    assert not der.read_der(_der(rsa_cert)).p256
    assert not der.read_der(_der(p384)).p256


def test_basic_constraints_absent_false_and_true() -> None:
    assert not der.read_der(_der(_made_elsewhere())).ca
    assert not der.read_der(_der(_made_elsewhere(ca=False))).ca
    assert der.read_der(_der(_made_elsewhere(ca=True))).ca


def test_every_string_type_of_a_name() -> None:
    subject = [
        x509.NameAttribute(NameOID.COMMON_NAME, "ünïcode"),
        x509.NameAttribute(
            NameOID.ORGANIZATIONAL_UNIT_NAME, "two", x509.name._ASN1Type.PrintableString
        ),
        x509.NameAttribute(
            NameOID.ORGANIZATIONAL_UNIT_NAME, "three", x509.name._ASN1Type.BMPString
        ),
        x509.NameAttribute(NameOID.EMAIL_ADDRESS, "a@b.c"),
    ]
    cert = _made_elsewhere(subject=subject)
    read = der.read_der(_der(cert))
    _same(read, cert)
    assert read.subject_values(der.ORGANIZATIONAL_UNIT) == ["two", "three"]


def test_a_bundle_in_order_with_white_space(
    ca: certs.CertificateAuthority, node: x509.Certificate
) -> None:
    pem = b"\n" + ca.cert_pem() + b"\r\n\n" + _pem(node) + b"\n  \n"
    read = der.read_pem_bundle(pem)
    assert [c.der for c in read] == [_der(ca.cert), _der(node)]
    assert der.read_pem_bundle(b"") == []


# --- it refuses what is not one certificate in strict DER ---------------------------------------


def test_pem_text_that_is_not_certificate_blocks(ca: certs.CertificateAuthority) -> None:
    pem = ca.cert_pem()
    for bad in (
        b"junk\n" + pem,
        pem + b"junk",
        pem.replace(b"CERTIFICATE-----\n", b"CERTIFICATE-----\n!", 1),
        certs.key_to_pem(certs.generate_key()),
        pem.replace(b"BEGIN CERTIFICATE", b"BEGIN X509 CRL"),
    ):
        with pytest.raises(ValueError):
            der.read_pem_bundle(bad)
    with pytest.raises(ValueError, match="found 0"):
        der.read_pem(b"")
    with pytest.raises(ValueError, match="found 2"):
        der.read_pem(pem + pem)


def test_every_truncation_is_refused(node: x509.Certificate) -> None:
    data = _der(node)
    for length in range(len(data)):
        with pytest.raises(ValueError):
            der.read_der(data[:length])


def test_data_after_the_certificate_is_refused(node: x509.Certificate) -> None:
    with pytest.raises(ValueError, match="after the last element"):
        der.read_der(_der(node) + b"\x00")


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = (n.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + n.to_bytes(size, "big") + content


def _oid_der(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(chunk))
    return _tlv(0x06, bytes(body))


_ALG = _tlv(0x30, _oid_der("1.2.840.10045.4.3.2"))
_SPKI = _tlv(
    0x30,
    _tlv(0x30, _oid_der("1.2.840.10045.2.1") + _oid_der("1.2.840.10045.3.1.7"))
    + _tlv(0x03, b"\x00\x04" + bytes(64)),
)


def _name_der(cn: bytes = b"n", tag: int = 0x0C) -> bytes:
    return _tlv(0x30, _tlv(0x31, _tlv(0x30, _oid_der("2.5.4.3") + _tlv(tag, cn))))


def _validity(before: bytes = b"261203080000Z", after: bytes = b"271203080000Z") -> bytes:
    return _tlv(0x30, _tlv(0x17, before) + _tlv(0x17, after))


def _extensions(*extensions: bytes) -> bytes:
    return _tlv(0xA3, _tlv(0x30, b"".join(extensions)))


def _basic(content: bytes, critical: bytes = _tlv(0x01, b"\xff")) -> bytes:
    return _tlv(0x30, _oid_der("2.5.29.19") + critical + _tlv(0x04, _tlv(0x30, content)))


def _san(content: bytes) -> bytes:
    return _tlv(0x30, _oid_der("2.5.29.17") + _tlv(0x04, _tlv(0x30, content)))


def _cert(
    *,
    serial: bytes = b"\x01\x02",
    validity: bytes | None = None,
    subject: bytes | None = None,
    extensions: bytes = b"",
    tail: bytes = b"",
) -> bytes:
    tbs = (
        _tlv(0xA0, _tlv(0x02, b"\x02"))
        + _tlv(0x02, serial)
        + _ALG
        + _name_der()
        + (validity if validity is not None else _validity())
        + (subject if subject is not None else _name_der())
        + _SPKI
        + extensions
        + tail
    )
    return _tlv(0x30, _tlv(0x30, tbs) + _ALG + _tlv(0x03, b"\x00" + bytes(70)))


def test_the_hand_made_certificate_is_read() -> None:
    names = _tlv(0x87, bytes([10, 0, 0, 1])) + _tlv(0x82, b"a.lab") + _tlv(0x86, b"x:y")
    read = der.read_der(
        _cert(extensions=_extensions(_basic(_tlv(0x01, b"\xff")), _san(names + _tlv(0x82, b"b"))))
    )
    assert read.dns_names == ("a.lab", "b")
    assert read.serial_number == 0x0102
    assert read.not_valid_after_utc == datetime(2027, 12, 3, 8, 0, tzinfo=UTC)
    assert read.subject == (("2.5.4.3", "n"),)
    assert read.ca and read.p256


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda: _cert(serial=b""), "empty INTEGER"),
        (lambda: _cert(serial=b"\x00\x01"), "shortest form"),
        (lambda: _cert(serial=b"\xff\x80"), "shortest form"),
        (lambda: _cert(serial=b"\x80"), "positive"),
        (lambda: _cert(serial=b"\x00"), "positive"),
        (lambda: _cert(validity=_validity(before=b"2612030800Z")), "DER's form"),
        (lambda: _cert(validity=_validity(before=b"261203080000+0100")), "DER's form"),
        (lambda: _cert(validity=_validity(after=b"270230080000Z")), "not a date"),
        (lambda: _cert(validity=_tlv(0x30, _tlv(0x17, b"261203080000Z"))), "neither UTCTime"),
        (
            lambda: _cert(validity=_tlv(0x30, _tlv(0x18, b"20261203080000.5Z") * 2)),
            "DER's form",
        ),
        (lambda: _cert(validity=_tlv(0x30, _tlv(0x04, b"x") * 2)), "neither UTCTime"),
        (lambda: _cert(subject=_name_der(tag=0x04)), "not a string"),
        (lambda: _cert(subject=_name_der(cn=b"\xff\xfe", tag=0x0C)), "not valid text"),
        (lambda: _cert(extensions=_extensions(_basic(b"", _tlv(0x01, b"\x01")))), "BOOLEAN"),
        (
            lambda: _cert(extensions=_extensions(_basic(b""), _basic(_tlv(0x01, b"\xff")))),
            "twice",
        ),
        (lambda: _cert(extensions=_extensions(_basic(_tlv(0x04, b"")))), "data after"),
        (lambda: _cert(tail=b"\x05\x00"), "data after"),
        (lambda: _cert(extensions=_extensions(_san(_tlv(0x30, b"")))), "not a GeneralName"),
        (lambda: _cert(extensions=_extensions(_san(b""))), "empty subjectAltName"),
        (lambda: _cert(extensions=_extensions(_san(_tlv(0x82, b"\xffx")))), "not ASCII"),
    ],
)
def test_malformed_fields_are_refused(make: Callable[[], bytes], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        der.read_der(make())


def test_lengths_that_are_not_der_are_refused() -> None:
    good = _cert()
    body = good[3:] if good[1] == 0x81 else good[4:]
    n = len(body)
    for bad, why in (
        (b"\x30\x80" + body + b"\x00\x00", "indefinite"),
        (b"\x30\x83" + n.to_bytes(3, "big") + body, "shortest form"),
        (b"\x30\x84" + n.to_bytes(4, "big") + body, "longer than the data"),
        (b"\x30\x81\x05" + body, "shortest form" if n >= 0x80 else "data after"),
        (b"\x30\x82\xff\xff" + body, "longer than what holds it"),
        (b"\x30", "without a length"),
        (b"\x1f\x81\x01\x00", "expected tag"),
    ):
        with pytest.raises(ValueError, match=why):
            der.read_der(bad)


def test_an_oversized_certificate_is_refused_before_it_is_read() -> None:
    with pytest.raises(ValueError, match="at most"):
        der.read_der(_tlv(0x30, bytes(der.MAX_DER)))


def test_object_identifiers_not_in_their_shortest_form() -> None:
    bad = _tlv(0x30, _tlv(0x31, _tlv(0x30, _tlv(0x06, b"\x55\x80\x04\x03") + _tlv(0x0C, b"n"))))
    with pytest.raises(ValueError, match="shortest form"):
        der.read_der(_cert(subject=bad))
    unfinished = _tlv(0x30, _tlv(0x31, _tlv(0x30, _tlv(0x06, b"\x55\x84") + _tlv(0x0C, b"n"))))
    with pytest.raises(ValueError, match="malformed"):
        der.read_der(_cert(subject=unfinished))


def test_flipped_bytes_give_a_certificate_or_value_error_never_a_crash(
    node: x509.Certificate,
) -> None:
    data = _der(node)
    rng = random.Random(19)
    for _ in range(3000):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            der.read_der(bytes(mutated))
        except ValueError:
            pass


# --- the start-up checks that use it (trust.x509), without cryptography -------------------------


def _key_pem(key: object, form: serialization.PrivateFormat) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.PEM, form, serialization.NoEncryption()
    )


def test_check_pair_takes_a_pair_in_either_key_format() -> None:
    key = certs.generate_key()
    cert = _pem(certs.self_signed_bootstrap_certificate(key, NOW))
    certs.check_pair(certs.key_to_pem(key), cert)
    certs.check_pair(_key_pem(key, serialization.PrivateFormat.TraditionalOpenSSL), cert)


def test_check_pair_refuses_halves_that_do_not_belong_together(node: x509.Certificate) -> None:
    with pytest.raises(ValueError, match="does not belong"):
        certs.check_pair(certs.key_to_pem(certs.generate_key()), _pem(node))
    rsa_key = rsa.generate_private_key(65537, 2048)
    with pytest.raises(ValueError, match="does not belong"):
        certs.check_pair(_key_pem(rsa_key, serialization.PrivateFormat.PKCS8), _pem(node))


def test_check_pair_refuses_a_key_that_is_not_p256() -> None:
    rsa_key = rsa.generate_private_key(65537, 2048)
    cert = _made_elsewhere(key=rsa_key.public_key())
    with pytest.raises(ValueError, match="not an ECDSA P-256 key"):
        certs.check_pair(_key_pem(rsa_key, serialization.PrivateFormat.PKCS8), _pem(cert))


def test_check_pair_refuses_files_that_are_not_a_key_or_a_certificate(
    node: x509.Certificate,
) -> None:
    key = certs.generate_key()
    good = certs.key_to_pem(key)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    for bad_key in (b"", b"not a key", encrypted, good.replace(b"\n", b"").replace(b"M", b"!", 3)):
        with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
            certs.check_pair(bad_key, _pem(node))
    for bad_cert in (b"", good, _pem(node) * 2, _pem(node)[:-40]):
        with pytest.raises(ValueError, match="not a PEM certificate"):
            certs.check_pair(good, bad_cert)


def test_read_bundle_holds_one_to_eight_cas(
    ca: certs.CertificateAuthority, node: x509.Certificate
) -> None:
    assert [c.der for c in certs.read_bundle(ca.cert_pem())] == [_der(ca.cert)]
    for bad, why in (
        (b"", "1 to 8"),
        (ca.cert_pem() * 9, "1 to 8"),
        (ca.cert_pem() + _pem(node), "not a CA"),
        (b"garbage", "not a PEM bundle"),
    ):
        with pytest.raises(ValueError, match=why):
            certs.read_bundle(bad)


def test_identity_and_cluster_id_read_alike_from_either_kind(
    ca: certs.CertificateAuthority, node: x509.Certificate
) -> None:
    assert certs.identity_of(node) == certs.identity_of(certs.read_cert(_pem(node)))
    assert certs.ca_cluster_id(ca.cert) == certs.ca_cluster_id(certs.read_cert(ca.cert_pem()))
    assert certs.ca_cluster_id(ca.cert) == CLUSTER_ID
    assert certs.fingerprint(_pem(node)) == certs.fingerprint(node)
    at = node.not_valid_after_utc
    for cert in (node, certs.read_cert(_pem(node))):
        assert certs.renewal_due(cert, at - timedelta(days=1), timedelta(days=2))
        assert not certs.expired(cert, at) and certs.expired(cert, at + timedelta(seconds=1))
