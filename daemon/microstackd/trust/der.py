"""The few fields an idle node reads from a certificate, without cryptography.

An idle daemon reads certificates on five paths: the identity of every
mTLS caller (``api/access.py``), the expiry of its own certificate (the
renewal check), its key pair and trust bundle at start-up, a control's
member-facing name at start-up, and the CAs ``status`` shows. Loading
the ``cryptography`` package for them costs each daemon ~10 MB of RSS
(docs/performance.md, "Idle RSS"), so those paths read the DER here and
``trust.x509`` loads ``cryptography`` only to make, sign or verify.

Rules (tests/unit/test_der.py has an adversarial test for each):

1. Strict DER, fail closed: definite lengths in their shortest form, no
   high tag numbers, nothing after the last element of any structure, no
   element longer than what holds it. Anything else is ``ValueError``.
2. It reads; it never verifies. A signature, a chain or a key is checked by
   TLS (the caller's certificate) or by ``trust.x509`` (cryptography). What
   it reads is only ever taken from a certificate that TLS verified or from
   this node's own files.
3. Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

#: X.520 attribute types, dotted.
COMMON_NAME = "2.5.4.3"
ORGANIZATIONAL_UNIT = "2.5.4.11"
_BASIC_CONSTRAINTS = "2.5.29.19"
_SUBJECT_ALT_NAME = "2.5.29.17"
#: GeneralName's dNSName: [2] IMPLICIT IA5String.
_DNS_NAME = 0x82
_NO_NAMES: tuple[str, ...] = ()
#: id-ecPublicKey with the named curve prime256v1 (P-256).
_EC_PUBLIC_KEY = "1.2.840.10045.2.1"
_P256 = "1.2.840.10045.3.1.7"

_SEQUENCE, _SET, _INTEGER, _BOOLEAN, _OID = 0x30, 0x31, 0x02, 0x01, 0x06
_BIT_STRING, _OCTET_STRING = 0x03, 0x04
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18
#: The string types an attribute value may have, and how each is decoded.
_STRINGS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1", 0x1E: "utf-16-be"}
#: A node's certificate is under 1 KB; a bundle of 8 CAs under 8 KB.
MAX_DER = 16 * 1024

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n(.*?)-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class Certificate:
    """What a certificate says, read but not verified. Named like
    cryptography's ``x509.Certificate`` where the two overlap, so the checks
    in ``trust.x509`` that read only these take either."""

    der: bytes
    serial_number: int
    not_valid_before_utc: datetime
    not_valid_after_utc: datetime
    #: (attribute type, value) of the subject, in order.
    subject: tuple[tuple[str, str], ...]
    #: basicConstraints cA.
    ca: bool
    #: Whether its public key is an ECDSA P-256 key.
    p256: bool
    #: The DNS names of its subjectAltName, in order.
    dns_names: tuple[str, ...] = ()

    def subject_values(self, attribute: str) -> list[str]:
        return [value for oid, value in self.subject if oid == attribute]

    @property
    def fingerprint(self) -> str:
        """Lower-case hex SHA-256 of the DER (``x509.fingerprint``)."""
        return hashlib.sha256(self.der).hexdigest()


def read_pem(pem: bytes) -> Certificate:
    """The one certificate of a PEM text (``ValueError`` for none or more)."""
    certs = read_pem_bundle(pem)
    if len(certs) != 1:
        raise ValueError(f"expected one PEM certificate, found {len(certs)}")
    return certs[0]


def read_pem_bundle(pem: bytes) -> list[Certificate]:
    """Every certificate of a PEM text, in order; ``ValueError`` for text that
    is neither a certificate block nor white space between them."""
    certs, at = [], 0
    for match in _PEM.finditer(pem):
        if pem[at : match.start()].strip():
            raise ValueError("text that is not a PEM certificate block")
        at = match.end()
        try:
            der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"a PEM certificate is not valid base64: {exc}") from None
        certs.append(read_der(der))
    if pem[at:].strip():
        raise ValueError("text that is not a PEM certificate block")
    return certs


def read_der(der: bytes) -> Certificate:
    """Read a DER certificate (``ValueError`` if it is not one)."""
    if len(der) > MAX_DER:
        raise ValueError(f"a certificate of {len(der)} bytes (at most {MAX_DER})")
    cert = _Reader(der).only(_SEQUENCE)
    tbs = cert.next(_SEQUENCE)
    cert.next(_SEQUENCE)  # signatureAlgorithm
    cert.next(_BIT_STRING)  # signatureValue
    cert.end()
    if tbs.peek() == 0xA0:  # [0] EXPLICIT version
        tbs.next(0xA0)
    serial = _integer(tbs.next(_INTEGER).data)
    tbs.next(_SEQUENCE)  # signature
    tbs.next(_SEQUENCE)  # issuer
    validity = tbs.next(_SEQUENCE)
    not_before, not_after = _time(validity), _time(validity)
    validity.end()
    subject = _name(tbs.next(_SEQUENCE))
    p256 = _is_p256(tbs.next(_SEQUENCE))
    for unique_id in (0x81, 0x82):  # issuerUniqueID, subjectUniqueID
        if tbs.peek() == unique_id:
            tbs.next(unique_id)
    ca, dns_names = False, _NO_NAMES
    if tbs.peek() == 0xA3:  # [3] EXPLICIT extensions
        ca, dns_names = _extensions(tbs.next(0xA3).only(_SEQUENCE))
    tbs.end()
    if serial <= 0:
        raise ValueError("a certificate's serial number must be positive")
    return Certificate(der, serial, not_before, not_after, subject, ca, p256, dns_names)


# --- the reader ---------------------------------------------------------------------------------


class _Reader:
    """The elements of one DER value's contents, read in order."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._at = 0

    def peek(self) -> int | None:
        return self.data[self._at] if self._at < len(self.data) else None

    def next(self, tag: int) -> _Reader:
        """The next element, which must have ``tag``: a reader of its contents."""
        data, at = self.data, self._at
        if at >= len(data):
            raise ValueError(f"expected tag {tag:#04x}, found the end")
        if data[at] != tag:
            raise ValueError(f"expected tag {tag:#04x}, found {data[at]:#04x}")
        if at + 1 >= len(data):
            raise ValueError("an element without a length")
        first, at = data[at + 1], at + 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            if count == 0:
                raise ValueError("an indefinite length (not DER)")
            if count > 3 or at + count > len(data):
                raise ValueError("a length longer than the data")
            length = int.from_bytes(data[at : at + count], "big")
            if length < 0x80 or data[at] == 0:
                raise ValueError("a length not in its shortest form (not DER)")
            at += count
        if at + length > len(data):
            raise ValueError("an element longer than what holds it")
        self._at = at + length
        return _Reader(data[at : at + length])

    def only(self, tag: int) -> _Reader:
        """The one element these contents hold."""
        inner = self.next(tag)
        self.end()
        return inner

    def end(self) -> None:
        if self._at != len(self.data):
            raise ValueError("data after the last element")


def _integer(data: bytes) -> int:
    if not data:
        raise ValueError("an empty INTEGER")
    if len(data) > 1 and (
        (data[0] == 0 and data[1] < 0x80) or (data[0] == 0xFF and data[1] >= 0x80)
    ):
        raise ValueError("an INTEGER not in its shortest form (not DER)")
    return int.from_bytes(data, "big", signed=True)


def _oid(data: bytes) -> str:
    if not data or data[-1] & 0x80:
        raise ValueError("a malformed OBJECT IDENTIFIER")
    arcs, value = [], 0
    for i, byte in enumerate(data):
        if value == 0 and byte == 0x80 and (i == 0 or not data[i - 1] & 0x80):
            raise ValueError("an OBJECT IDENTIFIER arc not in its shortest form")
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def _time(validity: _Reader) -> datetime:
    tag = validity.peek()
    if tag not in (_UTC_TIME, _GENERALIZED_TIME):
        raise ValueError("a validity time that is neither UTCTime nor GeneralizedTime")
    text = validity.next(tag).data
    digits = 12 if tag == _UTC_TIME else 14
    if len(text) != digits + 1 or text[-1:] != b"Z" or not text[:-1].isdigit():
        raise ValueError(f"a validity time not in DER's form: {text!r}")
    if tag == _UTC_TIME:  # RFC 5280: YY >= 50 is 19YY
        year = int(text[:2])
        text = (b"19" if year >= 50 else b"20") + text
    try:
        return datetime.strptime(text[:14].decode(), "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"a validity time that is not a date: {text!r}") from None


def _name(name: _Reader) -> tuple[tuple[str, str], ...]:
    attributes = []
    while name.peek() is not None:
        rdn = name.next(_SET)
        while rdn.peek() is not None:
            pair = rdn.next(_SEQUENCE)
            oid = _oid(pair.next(_OID).data)
            tag = pair.peek()
            if tag not in _STRINGS:
                raise ValueError(f"a name attribute {oid} that is not a string")
            value = pair.next(tag).data
            pair.end()
            try:
                attributes.append((oid, value.decode(_STRINGS[tag])))
            except UnicodeDecodeError:
                raise ValueError(f"a name attribute {oid} that is not valid text") from None
    return tuple(attributes)


def _is_p256(spki: _Reader) -> bool:
    algorithm = spki.next(_SEQUENCE)
    spki.next(_BIT_STRING)
    spki.end()
    if _oid(algorithm.next(_OID).data) != _EC_PUBLIC_KEY:
        return False
    if algorithm.peek() != _OID:
        return False
    curve = _oid(algorithm.next(_OID).data)
    algorithm.end()
    return curve == _P256


def _extensions(extensions: _Reader) -> tuple[bool, tuple[str, ...]]:
    """basicConstraints' cA and subjectAltName's DNS names; the rest skipped."""
    ca, dns_names, seen = False, _NO_NAMES, set()
    while extensions.peek() is not None:
        extension = extensions.next(_SEQUENCE)
        oid = _oid(extension.next(_OID).data)
        if oid in seen:
            raise ValueError(f"extension {oid} twice")
        seen.add(oid)
        if extension.peek() == _BOOLEAN:
            _boolean(extension.next(_BOOLEAN).data)
        value = extension.next(_OCTET_STRING)
        extension.end()
        if oid == _BASIC_CONSTRAINTS:
            ca = _basic_constraints_ca(value.only(_SEQUENCE))
        elif oid == _SUBJECT_ALT_NAME:
            dns_names = _dns_names(value.only(_SEQUENCE))
    return ca, dns_names


def _basic_constraints_ca(constraints: _Reader) -> bool:
    ca = False
    if constraints.peek() == _BOOLEAN:
        ca = _boolean(constraints.next(_BOOLEAN).data)
    if constraints.peek() == _INTEGER:  # pathLenConstraint
        constraints.next(_INTEGER)
    constraints.end()
    return ca


def _dns_names(names: _Reader) -> tuple[str, ...]:
    found = []
    while (tag := names.peek()) is not None:
        if tag & 0x1F == 0x1F or tag & 0xC0 != 0x80:
            raise ValueError(f"a subjectAltName entry with tag {tag:#04x} (not a GeneralName)")
        name = names.next(tag).data
        if tag == _DNS_NAME:
            try:
                found.append(name.decode("ascii"))
            except UnicodeDecodeError:
                raise ValueError("a DNS name that is not ASCII") from None
    if not found and not names.data:
        raise ValueError("an empty subjectAltName")
    return tuple(found)


def _boolean(data: bytes) -> bool:
    if data not in (b"\x00", b"\xff"):
        raise ValueError("a BOOLEAN not in DER's form")
    return data == b"\xff"
