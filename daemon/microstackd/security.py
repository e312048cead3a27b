"""Trust: keys, certificates, the password verifier and the bootstrap PAKE.

Rules this module keeps (each has an adversarial test in
tests/unit/test_security.py):

1. The cluster password never leaves the machine it was typed on. Only the
   verifier ``w = scrypt(NFC(password), salt)`` exists beyond that: stored by
   the control, and used by both sides as the SPAKE2 password. The wire sees
   SPAKE2 messages and MACs, from which no password guess can be tested
   offline; an active attacker gets one guess per exchange.
2. KDF parameters may come from a fake control, so they are bounded before
   any work is done (``log2_n`` 10..20, ``r`` 1..16, ``p`` 1..4, salt 16..64
   bytes, and at most 256 MiB of memory and 16x the default work in total).
3. Every key derived from a secret has exactly one purpose:
   ``derive_key(secret, PURPOSE_...)``, one ``PURPOSE_`` constant per use.
4. Both confirmations are HMACs over one transcript: length-prefixed fields
   in a fixed order, covering the protocol version, cluster id, the joiner's
   hello, the KDF parameters, both SPAKE2 messages, the fingerprint of the
   bootstrap TLS certificate (as the joiner saw it / as the control knows
   its own) and the CSR. The control's confirmation also covers what it
   hands out: certificate, CA certificate, control name and cluster port.
   A machine in the middle with its own TLS certificate therefore fails
   even when it relays every message faithfully.
5. The joiner confirms first. The control sends nothing that depends on the
   session key until the joiner's confirmation has verified.
6. An exchange object accepts each protocol message once and in order. Any
   failure, and any out-of-order call, spends the object: it then refuses
   everything, so a failed guess cannot be retried on the same challenge.
7. The control decides identity. The CSR only proves possession of a P-256
   key and must name the node it is for; the certificate's subject, role,
   SANs, extensions and validity come from the control's arguments.
8. ECDSA P-256 everywhere (Ed25519 leaves fail grpc's TLS handshake here).
   Node certificates are never CAs, never outlive their CA, and carry random
   159-bit serials (the control revokes by serial).
9. Pure: no I/O, no sockets, no clock. Callers pass ``now``, which must be
   timezone-aware.

Errors: what the peer caused raises ``BootstrapProtocolError``,
``WrongPassword`` or ``PeerAuthenticationFailed``; a certificate that is not
acceptable raises ``PermissionDenied``; a malformed identity raises
``InvalidArgument``; a local programming error raises ``ValueError``.
Exchange objects are not thread-safe; use one per bootstrap stream.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import re
import secrets
import struct
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from microstackd import errors, pake

__all__ = [
    "BOOTSTRAP_SERVER_NAME",
    "PROTOCOL_VERSION",
    "PURPOSE_CONFIRM_CONTROL",
    "PURPOSE_CONFIRM_JOINER",
    "PURPOSE_TOKEN_VERIFIER",
    "ROLES",
    "ROLE_COMPUTE",
    "ROLE_CONTROL",
    "CertificateAuthority",
    "ControlExchange",
    "Hello",
    "Identity",
    "JoinerExchange",
    "KdfParams",
    "cert_to_pem",
    "create_ca",
    "derive_key",
    "derive_verifier",
    "fingerprint",
    "generate_key",
    "identity_of",
    "issue_certificate",
    "key_to_pem",
    "load_cert",
    "load_key",
    "make_csr",
    "new_kdf_params",
    "self_signed_bootstrap_certificate",
    "sign_csr",
    "verify_issued_by",
]

PROTOCOL_VERSION = 1

#: Host name in the bootstrap port's self-signed certificate; the joiner sets
#: it as grpc's ``ssl_target_name_override``.
BOOTSTRAP_SERVER_NAME = "microstackd-bootstrap"

ROLE_CONTROL = "control"
ROLE_COMPUTE = "compute"
ROLES = frozenset({ROLE_CONTROL, ROLE_COMPUTE})

# One HKDF "info" per use of the SPAKE2 session key (rule 3).
PURPOSE_CONFIRM_JOINER = b"microstackd/v1/bootstrap/confirm-joiner"
PURPOSE_CONFIRM_CONTROL = b"microstackd/v1/bootstrap/confirm-control"
#: The SPAKE2 password a join token's secret stands for (the secret itself is never stored).
PURPOSE_TOKEN_VERIFIER = b"microstackd/v1/token/verifier"

_TRANSCRIPT_LABEL = b"microstackd bootstrap transcript v1"
_RESULT_LABEL = b"microstackd bootstrap result v1"

#: Certificates start this far in the past so a node whose clock is a little
#: behind the control's still accepts a certificate issued just now.
_CLOCK_SKEW = timedelta(minutes=10)

_VERIFIER_BYTES = 32
_MAC_BYTES = 32
_MAX_CSR_PEM = 16 * 1024
# SPAKE2 over Ed25519 (microstackd.pake): side byte + 32-byte point.
_PAKE_MESSAGE_BYTES = pake.MESSAGE_BYTES
_SIDE_JOINER = b"A"
_SIDE_CONTROL = b"B"

# KDF bounds (rule 2). Memory is 128 * r * N bytes; work is ~ N * r * p.
_LOG2_N = (10, 20)
_R = (1, 16)
_P = (1, 4)
_SALT = (16, 64)
_MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
_MAX_SCRYPT_WORK = 16 * (1 << 15) * 8 * 1  # 16x the default N * r * p

_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_CLUSTER_ID = re.compile(r"[\x21-\x7e]{1,64}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


# --- key derivation ---------------------------------------------------------------------------


def derive_key(secret: bytes, purpose: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 of ``secret`` with ``purpose`` as the info string.

    A distinct purpose per use means a key confirming one message can never
    be replayed to confirm another.
    """
    if not secret:
        raise ValueError("derive_key needs a secret")
    if not purpose:
        raise ValueError("derive_key needs a purpose")
    if not 1 <= length <= 255 * 32:
        raise ValueError(f"derive_key cannot produce {length} bytes")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose).derive(secret)


# --- keys, PEM, fingerprints ----------------------------------------------------------------------


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
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the private key is not an ECDSA P-256 key")
    _require_p256(key.public_key(), ValueError)
    return key


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    """Parse one PEM certificate (raises ``ValueError`` if it is not one)."""
    return x509.load_pem_x509_certificate(pem)


def fingerprint(cert: x509.Certificate | bytes | str) -> str:
    """Lower-case hex SHA-256 of the certificate's DER encoding.

    ``bytes`` and ``str`` are PEM (``ssl.get_server_certificate`` returns str).
    """
    if isinstance(cert, str):
        cert = cert.encode("ascii")
    if isinstance(cert, bytes):
        cert = load_cert(cert)
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
        if not _is_ca(self.cert):
            raise ValueError("the CA certificate is not a CA")

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes) -> CertificateAuthority:
        return cls(key=load_key(key_pem), cert=load_cert(cert_pem))

    def key_pem(self) -> bytes:
        return key_to_pem(self.key)

    def cert_pem(self) -> bytes:
        return cert_to_pem(self.cert)


def create_ca(cluster_id: str, now: datetime, days: int = 3650) -> CertificateAuthority:
    """A new cluster CA. It may sign node certificates only (path length 0)."""
    _check_cluster_id(cluster_id)
    now = _utc(now)
    key = generate_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "microstackd"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, cluster_id),
            x509.NameAttribute(NameOID.COMMON_NAME, "microstackd cluster CA"),
        ]
    )
    cert = (
        _builder(name, name, key.public_key(), now, now + timedelta(days=_days(days)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key=key, cert=cert)


def make_csr(key: ec.EllipticCurvePrivateKey, node_name: str) -> bytes:
    """The joiner's PEM CSR. Only the subject CN is set: the control decides the rest."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def issue_certificate(
    ca: CertificateAuthority,
    public_key: ec.EllipticCurvePublicKey,
    *,
    node_name: str,
    role: str,
    address: str,
    hostname: str,
    now: datetime,
    days: int = 365,
) -> x509.Certificate:
    """A node certificate, for mTLS in both directions (server and client).

    CN is the node name and OU its role; the SANs let peers dial the node by
    address (an IP SAN avoids name overrides), node name or host name. It
    never outlives the CA.
    """
    _check_dns_name("node name", node_name)
    _check_dns_name("hostname", hostname)
    if role not in ROLES:
        raise errors.InvalidArgument(f"unknown role {role!r}: expected one of {sorted(ROLES)}")
    address_name = _address_name(address)
    _require_p256(public_key, ValueError)
    now = _utc(now)
    not_after = min(now + timedelta(days=_days(days)), ca.cert.not_valid_after_utc)
    if not_after <= now:
        raise ValueError("the cluster CA has expired; it cannot issue certificates")

    sans: list[x509.GeneralName] = []
    seen: set[tuple[type, str]] = set()
    for san in (address_name, x509.DNSName(node_name), x509.DNSName(hostname)):
        key = (type(san), str(san.value).lower())
        if key not in seen:
            seen.add(key)
            sans.append(san)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, node_name),
        ]
    )
    return (
        _builder(subject, ca.cert.subject, public_key, now, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_agreement=True), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
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
    role: str,
    address: str,
    hostname: str,
    now: datetime,
    days: int = 365,
) -> x509.Certificate:
    """Sign a joiner's CSR with the identity the control decided (rule 7).

    The CSR must prove possession of a P-256 key and be for ``node_name``;
    whatever else it asks for (SANs, CA, other subject fields) is ignored.
    """
    if len(csr_pem) > _MAX_CSR_PEM:
        raise errors.BootstrapProtocolError("the CSR is too large")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise errors.BootstrapProtocolError(f"the CSR is not a PEM CSR: {exc}") from exc
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise errors.BootstrapProtocolError("the CSR's key is not an ECDSA P-256 key")
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        signature_ok = False
    if not signature_ok:
        raise errors.BootstrapProtocolError(
            "the CSR's signature does not verify: it does not prove possession of its key"
        )
    names = [attr.value for attr in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [node_name]:
        raise errors.BootstrapProtocolError(f"the CSR is for {names!r}, not for node {node_name!r}")
    return issue_certificate(
        ca,
        public_key,
        node_name=node_name,
        role=role,
        address=address,
        hostname=hostname,
        now=now,
        days=days,
    )


def self_signed_bootstrap_certificate(
    key: ec.EllipticCurvePrivateKey, now: datetime, days: int = 3650
) -> x509.Certificate:
    """The bootstrap port's certificate, which the joiner pins as its only root.

    CA:TRUE (path length 0) so it is a proper trust root for any verifier;
    grpc 1.85 and OpenSSL 3.0 also take a CA:FALSE one, stricter ones do not.
    Its fingerprint, not its name, is what the PAKE binds (rule 4).
    """
    now = _utc(now)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BOOTSTRAP_SERVER_NAME)])
    return (
        _builder(name, name, key.public_key(), now, now + timedelta(days=_days(days)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_cert_sign=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(BOOTSTRAP_SERVER_NAME)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class Identity:
    """Who a node certificate names."""

    name: str
    role: str
    serial: int
    not_after: datetime


def identity_of(cert: x509.Certificate) -> Identity:
    """Read the node identity a certificate carries (one CN, one known role)."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    roles = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if _is_ca(cert) or len(names) != 1 or len(roles) != 1 or roles[0].value not in ROLES:
        raise errors.PermissionDenied("the certificate does not name a cluster node")
    return Identity(
        name=str(names[0].value),
        role=str(roles[0].value),
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
    )


def verify_issued_by(ca_cert: x509.Certificate, cert: x509.Certificate, now: datetime) -> None:
    """Refuse (``PermissionDenied``) a certificate that is not a node certificate
    issued by this CA and valid at ``now``. Revocation is the caller's (by serial)."""
    now = _utc(now)
    if not _is_ca(ca_cert):
        raise ValueError("ca_cert is not a CA certificate")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        raise errors.PermissionDenied(
            "the certificate was not issued by this cluster's CA"
        ) from exc
    if _is_ca(cert):
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


# --- the password verifier -----------------------------------------------------------------------


@dataclass(frozen=True)
class KdfParams:
    """scrypt parameters; bounded on construction (rule 2) because the joiner
    receives them from a control it does not trust yet."""

    salt: bytes
    log2_n: int = 15
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        _check_kdf_params(self)


def new_kdf_params() -> KdfParams:
    """Default parameters with a fresh 16-byte salt, for a new cluster."""
    return KdfParams(salt=secrets.token_bytes(16))


def derive_verifier(password: str, params: KdfParams) -> bytes:
    """``scrypt(NFC(password), salt)``: the only password-derived secret kept.

    NFC so the same password typed on differently configured machines gives
    the same verifier.
    """
    _check_kdf_params(params)
    if not password:
        raise errors.InvalidArgument("the cluster password is empty")
    secret = unicodedata.normalize("NFC", password).encode("utf-8")
    kdf = Scrypt(
        salt=params.salt, length=_VERIFIER_BYTES, n=1 << params.log2_n, r=params.r, p=params.p
    )
    return kdf.derive(secret)


# --- the bootstrap exchange ---------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """The joiner's first message: who it says it is. Checked on construction."""

    node_name: str
    address: str
    hostname: str
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _check_dns_name("node name", self.node_name)
        _address_name(self.address)
        _check_dns_name("hostname", self.hostname)
        if type(self.version) is not int:
            raise errors.InvalidArgument("the protocol version must be an integer")


class _Step(enum.Enum):
    NEW = "new"
    CHALLENGED = "challenged"
    RESPONDED = "responded"
    CONFIRMED = "confirmed"
    DONE = "done"
    SPENT = "spent"


class _Exchange:
    """Order and once-only bookkeeping shared by both sides (rule 6)."""

    _step: _Step

    def _advance(self, expected: _Step, operation: str) -> None:
        """Check we are at ``expected``; otherwise spend the object and refuse."""
        if self._step is not expected:
            was = self._step
            self._step = _Step.SPENT
            if was is _Step.SPENT:
                raise errors.BootstrapProtocolError(
                    f"{operation}: this bootstrap exchange has already failed or finished;"
                    " start a new one"
                )
            raise errors.BootstrapProtocolError(
                f"{operation}: out of order (the exchange is {was.value},"
                f" expected {expected.value})"
            )


class ControlExchange(_Exchange):
    """The control's side of one bootstrap: SPAKE2 side B with idB = cluster id.

    challenge() -> check_response() -> result_confirmation(), each once. Count
    every WrongPassword *and* BootstrapProtocolError from check_response as a
    failed attempt for rate limiting.
    """

    def __init__(
        self,
        verifier: bytes,
        cluster_id: str,
        kdf: KdfParams,
        hello: Hello,
        own_fingerprint: str,
    ) -> None:
        _check_verifier(verifier)
        _check_cluster_id(cluster_id)
        _check_kdf_params(kdf)
        _check_version(hello)
        self._cluster_id = cluster_id
        self._kdf = kdf
        self._hello = hello
        self._fingerprint = _normalise_fingerprint(own_fingerprint)
        self._spake = pake.Spake2B(
            verifier, hello.node_name.encode("utf-8"), cluster_id.encode("utf-8")
        )
        self._challenge = b""
        self._key = b""
        self._transcript = b""
        self._step = _Step.NEW

    def challenge(self) -> bytes:
        """The control's SPAKE2 message, sent with the KDF parameters."""
        self._advance(_Step.NEW, "challenge")
        message = self._spake.start()
        self._challenge = message
        self._step = _Step.CHALLENGED
        return message

    def check_response(self, pake_message: bytes, csr_pem: bytes, confirmation: bytes) -> None:
        """Verify the joiner's confirmation over the transcript, CSR included.

        Raises WrongPassword when it does not verify: wrong password, or a
        machine in the middle (the joiner saw another TLS certificate).
        """
        self._advance(_Step.CHALLENGED, "check_response")
        self._step = _Step.SPENT  # until it verifies: one guess per exchange
        _check_pake_message(pake_message, _SIDE_JOINER)
        if len(confirmation) != _MAC_BYTES:
            raise errors.BootstrapProtocolError("the key confirmation has the wrong length")
        key = _finish(self._spake, pake_message)
        transcript = _bootstrap_transcript(
            cluster_id=self._cluster_id,
            hello=self._hello,
            kdf=self._kdf,
            joiner_message=pake_message,
            control_message=self._challenge,
            fingerprint=self._fingerprint,
            csr_pem=csr_pem,
        )
        if not hmac.compare_digest(_joiner_confirmation(key, transcript), confirmation):
            raise errors.WrongPassword(
                f"{self._hello.node_name} ({self._hello.address}) failed key confirmation:"
                " wrong cluster password, or a machine in the middle"
            )
        self._key, self._transcript = key, transcript
        self._step = _Step.CONFIRMED

    def result_confirmation(
        self,
        certificate_pem: bytes,
        ca_certificate_pem: bytes,
        control_name: str,
        cluster_port: int,
    ) -> bytes:
        """The control's confirmation over the transcript and what it hands out."""
        self._advance(_Step.CONFIRMED, "result_confirmation")
        self._step = _Step.SPENT
        if not _valid_port(cluster_port):
            raise ValueError(f"cluster port {cluster_port!r} is not a TCP port")
        mac = _control_confirmation(
            self._key,
            self._transcript,
            certificate_pem,
            ca_certificate_pem,
            control_name,
            cluster_port,
        )
        self._step = _Step.DONE
        return mac


class JoinerExchange(_Exchange):
    """The joiner's side of one bootstrap: SPAKE2 side A with idA = node name.

    Constructed from the control's challenge; then response() -> check_result(),
    each once. ``seen_fingerprint`` is the fingerprint of the certificate the
    joiner's TLS connection was actually shown.
    """

    def __init__(
        self,
        verifier: bytes,
        cluster_id: str,
        kdf: KdfParams,
        hello: Hello,
        seen_fingerprint: str,
        control_pake_message: bytes,
    ) -> None:
        _check_verifier(verifier)
        _check_cluster_id(cluster_id)
        _check_kdf_params(kdf)
        _check_version(hello)
        self._cluster_id = cluster_id
        self._kdf = kdf
        self._hello = hello
        self._fingerprint = _normalise_fingerprint(seen_fingerprint)
        _check_pake_message(control_pake_message, _SIDE_CONTROL)
        spake = pake.Spake2A(verifier, hello.node_name.encode("utf-8"), cluster_id.encode("utf-8"))
        message = spake.start()
        self._message = message
        self._challenge = control_pake_message
        self._key = _finish(spake, control_pake_message)
        self._transcript = b""
        self._public_key: object = None
        self._step = _Step.NEW

    def response(self, csr_pem: bytes) -> tuple[bytes, bytes]:
        """(the joiner's SPAKE2 message, its confirmation), sent with the CSR."""
        self._advance(_Step.NEW, "response")
        self._step = _Step.SPENT
        self._public_key = x509.load_pem_x509_csr(csr_pem).public_key()
        self._transcript = _bootstrap_transcript(
            cluster_id=self._cluster_id,
            hello=self._hello,
            kdf=self._kdf,
            joiner_message=self._message,
            control_message=self._challenge,
            fingerprint=self._fingerprint,
            csr_pem=csr_pem,
        )
        confirmation = _joiner_confirmation(self._key, self._transcript)
        self._step = _Step.RESPONDED
        return self._message, confirmation

    def check_result(
        self,
        certificate_pem: bytes,
        ca_certificate_pem: bytes,
        control_name: str,
        cluster_port: int,
        confirmation: bytes,
    ) -> None:
        """Verify the control's confirmation, then that the certificate it vouched
        for is ours and chains to the CA it sent (a control bug, not an attack)."""
        self._advance(_Step.RESPONDED, "check_result")
        self._step = _Step.SPENT
        if not _valid_port(cluster_port):
            raise errors.BootstrapProtocolError(f"cluster port {cluster_port!r} is not a TCP port")
        expected = _control_confirmation(
            self._key,
            self._transcript,
            certificate_pem,
            ca_certificate_pem,
            control_name,
            cluster_port,
        )
        if not hmac.compare_digest(expected, confirmation):
            raise errors.PeerAuthenticationFailed()
        # Authenticated from here on: anything wrong is the control's bug.
        try:
            cert = load_cert(certificate_pem)
            ca_cert = load_cert(ca_certificate_pem)
        except ValueError as exc:
            raise errors.BootstrapProtocolError(
                f"the control sent a malformed certificate: {exc}"
            ) from exc
        if not _is_ca(ca_cert):
            raise errors.BootstrapProtocolError("the control's CA certificate is not a CA")
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
            raise errors.BootstrapProtocolError(
                "the control's certificate for this node is not signed by the CA it sent"
            ) from exc
        if cert.public_key() != self._public_key:
            raise errors.BootstrapProtocolError(
                "the control's certificate for this node is not for this node's key"
            )
        if identity_of(cert).name != self._hello.node_name:
            raise errors.BootstrapProtocolError(
                f"the control's certificate is not for node {self._hello.node_name!r}"
            )
        self._step = _Step.DONE


# --- transcript and confirmations (private; tests use them to play a fake control) --------------


def _frame(*fields: bytes) -> bytes:
    """Length-prefix every field so no two field lists encode the same (rule 4)."""
    return b"".join(struct.pack(">I", len(field)) + field for field in fields)


def _u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def _bootstrap_transcript(
    *,
    cluster_id: str,
    hello: Hello,
    kdf: KdfParams,
    joiner_message: bytes,
    control_message: bytes,
    fingerprint: str,
    csr_pem: bytes,
) -> bytes:
    return _frame(
        _TRANSCRIPT_LABEL,
        _u64(hello.version),
        cluster_id.encode("utf-8"),
        hello.node_name.encode("utf-8"),
        hello.address.encode("utf-8"),
        hello.hostname.encode("utf-8"),
        kdf.salt,
        _u64(kdf.log2_n),
        _u64(kdf.r),
        _u64(kdf.p),
        joiner_message,
        control_message,
        fingerprint.encode("ascii"),
        csr_pem,
    )


def _joiner_confirmation(key: bytes, transcript: bytes) -> bytes:
    mac_key = derive_key(key, PURPOSE_CONFIRM_JOINER)
    return hmac.new(mac_key, transcript, hashlib.sha256).digest()


def _control_confirmation(
    key: bytes,
    transcript: bytes,
    certificate_pem: bytes,
    ca_certificate_pem: bytes,
    control_name: str,
    cluster_port: int,
) -> bytes:
    message = _frame(
        _RESULT_LABEL,
        transcript,
        certificate_pem,
        ca_certificate_pem,
        control_name.encode("utf-8"),
        _u64(cluster_port),
    )
    mac_key = derive_key(key, PURPOSE_CONFIRM_CONTROL)
    return hmac.new(mac_key, message, hashlib.sha256).digest()


# --- checks ---------------------------------------------------------------------------------------


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (naive datetimes are ambiguous)")
    return now.astimezone(UTC)


def _days(days: int) -> int:
    if type(days) is not int or days < 1:
        raise ValueError(f"a certificate must be valid for at least one day, not {days!r}")
    return days


def _require_p256(key: object, error: type[Exception]) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise error("the key is not an ECDSA P-256 key")


def _check_dns_name(what: str, name: str) -> None:
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 253
        or not all(_DNS_LABEL.fullmatch(label) for label in name.split("."))
    ):
        raise errors.InvalidArgument(f"{what} {name!r} is not a valid DNS name")


def _address_name(address: str) -> x509.GeneralName:
    """The SAN for an address: IPAddress if it parses as one, else DNSName."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        _check_dns_name("address", address)
        return x509.DNSName(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise errors.InvalidArgument(f"address {address!r} has a zone; use a routable address")
    return x509.IPAddress(ip)


def _check_cluster_id(cluster_id: str) -> None:
    if not isinstance(cluster_id, str) or not _CLUSTER_ID.fullmatch(cluster_id):
        raise errors.InvalidArgument(f"cluster id {cluster_id!r} is malformed")


def _check_kdf_params(params: KdfParams) -> None:
    def within(value: object, bounds: tuple[int, int]) -> bool:
        return type(value) is int and bounds[0] <= value <= bounds[1]

    if not isinstance(params.salt, bytes) or not _SALT[0] <= len(params.salt) <= _SALT[1]:
        raise errors.BootstrapProtocolError(f"the KDF salt must be {_SALT[0]}..{_SALT[1]} bytes")
    if not (within(params.log2_n, _LOG2_N) and within(params.r, _R) and within(params.p, _P)):
        raise errors.BootstrapProtocolError(
            f"KDF parameters out of bounds (log2_n={params.log2_n!r} r={params.r!r}"
            f" p={params.p!r}): refusing a weak or a resource-exhausting KDF"
        )
    n = 1 << params.log2_n
    if 128 * params.r * n > _MAX_SCRYPT_MEMORY or n * params.r * params.p > _MAX_SCRYPT_WORK:
        raise errors.BootstrapProtocolError(
            f"KDF parameters too costly (log2_n={params.log2_n} r={params.r} p={params.p})"
        )


def _check_verifier(verifier: bytes) -> None:
    if not isinstance(verifier, bytes) or len(verifier) != _VERIFIER_BYTES:
        raise ValueError(f"the verifier must be {_VERIFIER_BYTES} bytes")


def _check_version(hello: Hello) -> None:
    if hello.version != PROTOCOL_VERSION:
        raise errors.BootstrapProtocolError(
            f"unsupported bootstrap protocol version {hello.version}"
            f" (this node speaks {PROTOCOL_VERSION})"
        )


def _normalise_fingerprint(value: str) -> str:
    normalised = value.lower() if isinstance(value, str) else ""
    if not _HEX_SHA256.fullmatch(normalised):
        raise ValueError("a fingerprint is 64 hex digits (SHA-256 of the certificate's DER)")
    return normalised


def _valid_port(port: object) -> bool:
    return type(port) is int and 1 <= port <= 65535


def _check_pake_message(message: bytes, side: bytes) -> None:
    if not isinstance(message, bytes) or len(message) != _PAKE_MESSAGE_BYTES:
        raise errors.BootstrapProtocolError("malformed SPAKE2 message (wrong length)")
    if message[:1] != side:
        raise errors.BootstrapProtocolError("SPAKE2 message from the wrong side (reflected?)")


def _finish(spake: pake.Spake2A | pake.Spake2B, message: bytes) -> bytes:
    """Finish SPAKE2; a point that is not in the prime-order group, the identity,
    or our own message reflected back is the peer's protocol error."""
    try:
        key = spake.finish(message)
    except pake.PakeError as exc:
        raise errors.BootstrapProtocolError(f"malformed SPAKE2 message: {exc!r}") from exc
    return key


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _key_usage(
    *,
    digital_signature: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
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
