"""Keys, certificates and the cluster CA: the X.509 half of trust.

Rules (tests/unit/test_security.py has an adversarial test for each):

1. ECDSA P-256 everywhere (Ed25519 leaves fail grpc's TLS handshake here).
   Node certificates are never CAs, never outlive their CA, and carry random
   159-bit serials (the control revokes by serial).
2. The control decides identity. A CSR only proves possession of a P-256 key
   and must name the node it is for; the certificate's subject, role, SANs,
   extensions and validity come from the control's arguments, each checked by
   ``trust.names`` (the one identity validator). Only a control certificate
   carries ``CONTROL_SERVER_NAME``, the name members dial the control by; no
   certificate may be issued for another reserved name.
3. Pure: no files, no sockets, no clock (``check_pair`` hands OpenSSL its
   two PEMs through in-memory files). Callers pass ``now``, which must be
   timezone-aware.
4. An idle daemon needs no cryptography (~10 MB of RSS): the reads on its
   idle paths (``read_cert``, ``read_bundle``, ``check_pair``,
   ``identity_of``, ``renewal_due``, ``fingerprint``) go through
   ``trust.der``, and cryptography is imported at the first key made, CSR
   signed or signature verified (``microstackd.lazy``).

Errors: a CSR the peer sent that is unusable raises ``BootstrapProtocolError``;
a certificate that is not acceptable raises ``PermissionDenied``; a malformed
identity raises ``InvalidArgument``; a local programming error ``ValueError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from microstackd import errors, lazy
from microstackd.model import Role
from microstackd.trust import der, names

if TYPE_CHECKING:
    from cryptography import exceptions as crypto_errors
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509 import oid
else:  # imported at the first key, signature or verification (microstackd.lazy)
    crypto_errors = lazy.module("cryptography.exceptions")
    x509 = lazy.module("cryptography.x509")
    hashes = lazy.module("cryptography.hazmat.primitives.hashes")
    serialization = lazy.module("cryptography.hazmat.primitives.serialization")
    ec = lazy.module("cryptography.hazmat.primitives.asymmetric.ec")
    oid = lazy.module("cryptography.x509.oid")

#: Host name in the bootstrap port's self-signed certificate; the joiner sets
#: it as grpc's ``ssl_target_name_override``.
BOOTSTRAP_SERVER_NAME = names.BOOTSTRAP_SERVER_NAME
#: Host name in the control's certificate, and only there; members set it as
#: ``ssl_target_name_override`` when they call the control.
CONTROL_SERVER_NAME = names.CONTROL_SERVER_NAME
#: The roles a node certificate may name (its OU).
CERTIFICATE_ROLES = frozenset({Role.CONTROL, Role.COMPUTE})

#: Certificates start this far in the past so a node whose clock is a little
#: behind the control's still accepts a certificate issued just now.
CLOCK_SKEW = _CLOCK_SKEW = timedelta(minutes=10)
#: Bundles of CA certificates (the trust a node holds) hold at most this many.
MAX_BUNDLE = 8

if TYPE_CHECKING:  # for callers' annotations, which name them without importing cryptography
    Certificate = x509.Certificate
    PrivateKey = ec.EllipticCurvePrivateKey
_MAX_CSR_PEM = 16 * 1024


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new ECDSA P-256 key (Ed25519 fails grpc's TLS handshake here)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: the store protects it with file mode 0600."""
    _require_p256(key.public_key(), ValueError)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """Load a key written by :func:`key_to_pem`; anything but P-256 is refused."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, crypto_errors.UnsupportedAlgorithm) as exc:
        raise ValueError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the private key is not an ECDSA P-256 key")
    _require_p256(key.public_key(), ValueError)
    return key


def check_pair(key_pem: bytes, cert_pem: bytes) -> None:
    """Refuse (``ValueError``, saying which and why) a key file that is not a
    P-256 key, a certificate file that is not a certificate, or a pair whose
    halves do not belong together: before grpc reports any of them as a
    port it failed to bind.

    Without cryptography (a daemon checks its pairs at every start,
    ``trust.der``): the certificate is read here, and OpenSSL, through the
    ``ssl`` module grpc's channels already load, checks the key against it."""
    if b"ENCRYPTED" in key_pem or b"-----BEGIN" not in key_pem or b"PRIVATE KEY" not in key_pem:
        raise ValueError("not an unencrypted PEM private key")
    try:
        cert = read_cert(cert_pem)
    except ValueError as exc:
        raise ValueError(f"the certificate is not a PEM certificate: {exc}") from exc
    if not cert.p256:
        raise ValueError("the certificate's key is not an ECDSA P-256 key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with _memory_file(key_pem) as key_path, _memory_file(cert_pem) as cert_path:
        try:  # a password callback that refuses, so OpenSSL never prompts on a terminal
            context.load_cert_chain(cert_path, key_path, password=_no_password)
        except ssl.SSLError as exc:
            # NO_CERTIFICATE_ASSIGNED: a key of another type than the certificate's
            if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
                raise ValueError("the key does not belong to the certificate") from None
            raise ValueError(f"not an unencrypted PEM private key: {exc.reason}") from None


def _no_password() -> bytes:
    raise ValueError("not an unencrypted PEM private key (it asks for a password)")


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path to ``data`` that never touches a disk (``ssl`` reads files only)."""
    fd = os.memfd_create("microstackd-pem", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    """Parse one PEM certificate (raises ``ValueError`` if it is not one)."""
    return x509.load_pem_x509_certificate(pem)


def read_cert(pem: bytes) -> der.Certificate:
    """One PEM certificate's fields, read without cryptography and not
    verified (``ValueError`` if it is not one certificate): for the checks
    below that take either kind."""
    return der.read_pem(pem)


def read_bundle(pem: bytes) -> list[der.Certificate]:
    """The CA certificates of a PEM bundle, read without cryptography and not
    verified (one or more; ``ValueError`` for none, too many, or one that is
    not a CA)."""
    try:
        certs = der.read_pem_bundle(pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM bundle of certificates: {exc}") from exc
    if not 0 < len(certs) <= MAX_BUNDLE:
        raise ValueError(f"a trust bundle holds 1 to {MAX_BUNDLE} CA certificates")
    if not all(c.ca for c in certs):
        raise ValueError("a certificate of the trust bundle is not a CA")
    return certs


def load_bundle(pem: bytes) -> list[x509.Certificate]:
    """The CA certificates of a PEM bundle, as :func:`read_bundle` checks them."""
    return [x509.load_der_x509_certificate(c.der) for c in read_bundle(pem)]


def fingerprint(cert: x509.Certificate | der.Certificate | bytes | str) -> str:
    """Lower-case hex SHA-256 of the certificate's DER encoding.

    ``bytes`` and ``str`` are PEM (``ssl.get_server_certificate`` returns str).
    """
    if isinstance(cert, str):
        cert = cert.encode("ascii")
    if isinstance(cert, bytes):
        return read_cert(cert).fingerprint
    if isinstance(cert, der.Certificate):
        return cert.fingerprint
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CertificateAuthority:
    """The cluster CA. The pair is checked on construction: the key must be the
    certificate's, and the certificate a CA."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def __post_init__(self) -> None:
        if self.cert.public_key() != self.key.public_key():
            raise ValueError("the CA key does not belong to the CA certificate")
        if not is_ca(self.cert):
            raise ValueError("the CA certificate is not a CA")

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes) -> CertificateAuthority:
        return cls(key=load_key(key_pem), cert=load_cert(cert_pem))

    def key_pem(self) -> bytes:
        return key_to_pem(self.key)

    def cert_pem(self) -> bytes:
        return cert_to_pem(self.cert)


def create_ca(
    cluster_id: str, now: datetime, days: int = 3650, *, lifetime: timedelta | None = None
) -> CertificateAuthority:
    """A new cluster CA. It may sign node certificates only (path length 0)."""
    names.cluster_id(cluster_id)
    now = _utc(now)
    valid = _lifetime(days, lifetime)
    key = generate_key()
    name = x509.Name(
        [
            x509.NameAttribute(oid.NameOID.ORGANIZATION_NAME, "microstackd"),
            x509.NameAttribute(oid.NameOID.ORGANIZATIONAL_UNIT_NAME, cluster_id),
            x509.NameAttribute(oid.NameOID.COMMON_NAME, "microstackd cluster CA"),
        ]
    )
    cert = (
        _builder(name, name, key.public_key(), now, now + valid)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key=key, cert=cert)


def ca_cluster_id(cert: x509.Certificate | der.Certificate) -> str:
    """The cluster id a CA made by :func:`create_ca` carries (its OU)."""
    cert = _read(cert)
    units = cert.subject_values(der.ORGANIZATIONAL_UNIT)
    if not cert.ca or len(units) != 1:
        raise ValueError("not a cluster CA certificate (no single OU naming the cluster)")
    return names.cluster_id(units[0])


def make_csr(key: ec.EllipticCurvePrivateKey, node_name: str) -> bytes:
    """The joiner's PEM CSR. Only the subject CN is set: the control decides the rest."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, node_name)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def issue_certificate(
    ca: CertificateAuthority,
    public_key: ec.EllipticCurvePublicKey,
    *,
    node_name: str,
    role: Role,
    address: str,
    hostname: str,
    now: datetime,
    days: int = 365,
    lifetime: timedelta | None = None,
) -> x509.Certificate:
    """A node certificate, for mTLS in both directions (server and client).

    CN is the node name and OU its role; the SANs let peers dial the node by
    address (an IP SAN avoids name overrides), node name or host name, and a
    control also by ``CONTROL_SERVER_NAME`` (rule 2). It never outlives the CA.
    ``lifetime``, when given, replaces ``days`` (seconds in tests).
    """
    names.node_name(node_name)
    names.hostname(hostname)
    if role not in CERTIFICATE_ROLES:
        raise errors.InvalidArgument(
            f"unknown role {role!r}: expected one of {sorted(CERTIFICATE_ROLES)}"
        )
    role = Role(role)
    address_name = x509.IPAddress(ipaddress.ip_address(names.ip_address(address)))
    _require_p256(public_key, ValueError)
    now = _utc(now)
    not_after = min(now + _lifetime(days, lifetime), ca.cert.not_valid_after_utc)
    if not_after <= now:
        raise ValueError("the cluster CA has expired; it cannot issue certificates")

    sans: list[x509.GeneralName] = []
    seen: set[tuple[type, str]] = set()
    wanted = [address_name, x509.DNSName(node_name), x509.DNSName(hostname)]
    if role is Role.CONTROL:
        wanted.append(x509.DNSName(CONTROL_SERVER_NAME))
    for san in wanted:
        key = (type(san), str(san.value).lower())
        if key not in seen:
            seen.add(key)
            sans.append(san)
    subject = x509.Name(
        [
            x509.NameAttribute(oid.NameOID.ORGANIZATIONAL_UNIT_NAME, role.value),
            x509.NameAttribute(oid.NameOID.COMMON_NAME, node_name),
        ]
    )
    return (
        _builder(subject, ca.cert.subject, public_key, now, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # keyEncipherment means nothing for an ECDSA key, but libvirt (gnutls)
        # refuses a certificate without it, and the node certificate is also
        # its libvirtd's and QEMU's for live migration (docs/architecture.md).
        .add_extension(
            _key_usage(digital_signature=True, key_encipherment=True, key_agreement=True),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [oid.ExtendedKeyUsageOID.SERVER_AUTH, oid.ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(_authority_key_identifier(ca), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def sign_csr(
    ca: CertificateAuthority,
    csr_pem: bytes,
    *,
    node_name: str,
    role: Role,
    address: str,
    hostname: str,
    now: datetime,
    days: int = 365,
    lifetime: timedelta | None = None,
) -> x509.Certificate:
    """Sign a joiner's CSR with the identity the control decided (rule 2).

    The CSR must prove possession of a P-256 key and be for ``node_name``;
    whatever else it asks for (SANs, CA, other subject fields) is ignored.
    """
    if len(csr_pem) > _MAX_CSR_PEM:
        raise errors.BootstrapProtocolError("the CSR is too large")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        public_key = csr.public_key()
    except (ValueError, crypto_errors.UnsupportedAlgorithm) as exc:
        raise errors.BootstrapProtocolError(f"the CSR is not a PEM CSR: {exc}") from exc
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise errors.BootstrapProtocolError("the CSR's key is not an ECDSA P-256 key")
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, crypto_errors.UnsupportedAlgorithm):
        signature_ok = False
    if not signature_ok:
        raise errors.BootstrapProtocolError(
            "the CSR's signature does not verify: it does not prove possession of its key"
        )
    cns = [attr.value for attr in csr.subject.get_attributes_for_oid(oid.NameOID.COMMON_NAME)]
    if cns != [node_name]:
        raise errors.BootstrapProtocolError(f"the CSR is for {cns!r}, not for node {node_name!r}")
    return issue_certificate(
        ca,
        public_key,
        node_name=node_name,
        role=role,
        address=address,
        hostname=hostname,
        now=now,
        days=days,
        lifetime=lifetime,
    )


def revocation_list(
    ca: CertificateAuthority, serials: list[str], now: datetime, days: int = 30
) -> bytes:
    """A CRL (PEM) revoking ``serials`` (hex): what the computes' libvirtd and
    QEMU refuse, so a removed node's certificate no longer moves guests."""
    now = _utc(now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - _CLOCK_SKEW)
        .next_update(min(now + timedelta(days=_days(days)), ca.cert.not_valid_after_utc))
        .add_extension(_authority_key_identifier(ca), critical=False)
    )
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial, 16))
            .revocation_date(now - _CLOCK_SKEW)
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def self_signed_bootstrap_certificate(
    key: ec.EllipticCurvePrivateKey,
    now: datetime,
    days: int = 3650,
    *,
    lifetime: timedelta | None = None,
) -> x509.Certificate:
    """The bootstrap port's certificate, which the joiner pins as its only root.

    CA:TRUE (path length 0) so it is a proper trust root for any verifier;
    grpc 1.85 and OpenSSL 3.0 also take a CA:FALSE one, stricter ones do not.
    Its fingerprint, not its name, is what the PAKE binds (``trust.exchange``, rule 4).
    """
    now = _utc(now)
    name = x509.Name([x509.NameAttribute(oid.NameOID.COMMON_NAME, BOOTSTRAP_SERVER_NAME)])
    return (
        _builder(name, name, key.public_key(), now, now + _lifetime(days, lifetime))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_cert_sign=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(BOOTSTRAP_SERVER_NAME)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class Identity:
    """Who a node certificate names."""

    name: str
    role: Role
    serial: int
    not_after: datetime
    #: When it starts to be valid (issued then, less the clock-skew allowance).
    not_before: datetime | None = None


def identity_of(cert: x509.Certificate | der.Certificate) -> Identity:
    """Read the node identity a certificate carries (one CN, one known role)."""
    cert = _read(cert)
    cns = cert.subject_values(der.COMMON_NAME)
    roles = cert.subject_values(der.ORGANIZATIONAL_UNIT)
    valid = {r.value for r in CERTIFICATE_ROLES}
    if cert.ca or len(cns) != 1 or len(roles) != 1 or roles[0] not in valid:
        raise errors.PermissionDenied("the certificate does not name a cluster node")
    return Identity(
        name=cns[0],
        role=Role(roles[0]),
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
        not_before=cert.not_valid_before_utc,
    )


def _read(cert: x509.Certificate | der.Certificate) -> der.Certificate:
    if isinstance(cert, der.Certificate):
        return cert
    return der.read_der(cert.public_bytes(serialization.Encoding.DER))


def dns_names(cert: x509.Certificate | der.Certificate) -> list[str]:
    """The DNS names in a certificate's SAN."""
    return list(_read(cert).dns_names)


def verify_issued_by(ca_cert: x509.Certificate, cert: x509.Certificate, now: datetime) -> None:
    """Refuse (``PermissionDenied``) a certificate that is not a node certificate
    issued by this CA and valid at ``now``. Revocation is the caller's (by serial)."""
    now = _utc(now)
    if not is_ca(ca_cert):
        raise ValueError("ca_cert is not a CA certificate")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (
        ValueError,
        TypeError,
        crypto_errors.InvalidSignature,
        crypto_errors.UnsupportedAlgorithm,
    ) as exc:
        raise errors.PermissionDenied(
            "the certificate was not issued by this cluster's CA"
        ) from exc
    if is_ca(cert):
        raise errors.PermissionDenied("a CA certificate is not a node certificate")
    for checked, what in ((cert, "the certificate"), (ca_cert, "the cluster CA")):
        if now < checked.not_valid_before_utc:
            raise errors.PermissionDenied(
                f"{what} is not valid yet (from {checked.not_valid_before_utc:%Y-%m-%d %H:%M} UTC;"
                " is this node's clock right?)"
            )
        if now > checked.not_valid_after_utc:
            raise errors.PermissionDenied(
                f"{what} expired at {checked.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
            )


# --- checks -------------------------------------------------------------------------------------


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (naive datetimes are ambiguous)")
    return now.astimezone(UTC)


def _days(days: int) -> int:
    if type(days) is not int or days < 1:
        raise ValueError(f"a certificate must be valid for at least one day, not {days!r}")
    return days


#: The shortest lifetime a certificate may be given (tests use seconds).
MIN_LIFETIME = timedelta(seconds=2)


def _lifetime(days: int, lifetime: timedelta | None) -> timedelta:
    """``lifetime`` when given (at least ``MIN_LIFETIME``), else ``days``."""
    if lifetime is None:
        return timedelta(days=_days(days))
    if not isinstance(lifetime, timedelta) or lifetime < MIN_LIFETIME:
        raise ValueError(
            f"a certificate must be valid for at least {MIN_LIFETIME}, not {lifetime!r}"
        )
    return lifetime


def renewal_due(
    cert: x509.Certificate | der.Certificate, now: datetime, renew_before: timedelta
) -> bool:
    """Whether ``cert`` is within ``renew_before`` of its expiry (or past it)."""
    return cert.not_valid_after_utc - _utc(now) <= renew_before


def expired(cert: x509.Certificate | der.Certificate, now: datetime) -> bool:
    return _utc(now) > cert.not_valid_after_utc


def _require_p256(key: object, error: type[Exception]) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise error("the key is not an ECDSA P-256 key")


def is_ca(cert: x509.Certificate | der.Certificate) -> bool:
    if isinstance(cert, der.Certificate):
        return cert.ca
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_identifier(ca: CertificateAuthority) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:  # a CA made elsewhere
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    """Common fields: random 159-bit serial, backdated start (clock skew), SKI."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
