"""The bootstrap exchange: the joiner's hello, SPAKE2 keyed by the password
verifier (or a join token's), both key confirmations, and ``derive_key``.

Rules this module keeps (each has an adversarial test in
tests/unit/test_security.py):

1. The wire sees SPAKE2 messages and MACs, from which no password guess can
   be tested offline; an active attacker gets one guess per exchange. The
   SPAKE2 password is the verifier (``trust.kdf``), never the password.
2. The hello's identity is checked by ``trust.names``, the one identity
   validator, when it is built; its protocol version by ``check_version``.
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
7. Pure: no I/O, no sockets, no clock.

Errors: what the peer caused raises ``BootstrapProtocolError``,
``WrongPassword`` or ``PeerAuthenticationFailed``; a malformed identity
raises ``InvalidArgument``; a local programming error raises ``ValueError``.
Exchange objects are not thread-safe; use one per bootstrap stream.
"""

from __future__ import annotations

import enum
import hmac
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from microstackd import errors, lazy
from microstackd.trust import kdf as _kdf
from microstackd.trust import names, pake
from microstackd.trust.kdf import KdfParams
from microstackd.trust.transcript import (
    bootstrap_transcript,
    control_confirmation,
    joiner_confirmation,
)
from microstackd.trust.x509 import identity_of, is_ca, load_cert

if TYPE_CHECKING:
    from cryptography import exceptions as crypto_errors
    from cryptography import x509 as _x509
else:  # imported at the first CSR (microstackd.lazy)
    crypto_errors = lazy.module("cryptography.exceptions")
    _x509 = lazy.module("cryptography.x509")

PROTOCOL_VERSION = 1


_MAC_BYTES = 32
# SPAKE2 over Ed25519 (microstackd.trust.pake): side byte + 32-byte point.
_PAKE_MESSAGE_BYTES = pake.MESSAGE_BYTES
_SIDE_JOINER = b"A"
_SIDE_CONTROL = b"B"

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


# --- the bootstrap exchange ---------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """The joiner's first message: who it says it is. Checked on construction."""

    node_name: str
    address: str
    hostname: str
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        names.node_name(self.node_name, "node name")
        names.ip_address(self.address, "node address")
        names.hostname(self.hostname, "hostname")
        if type(self.version) is not int:
            raise errors.InvalidArgument("the protocol version must be an integer")


@dataclass(frozen=True)
class Challenge:
    """The control's answer to a hello: its cluster, KDF parameters and SPAKE2 message."""

    cluster_id: str
    kdf: KdfParams
    pake_message: bytes


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

    def _begin(
        self, verifier: bytes, cluster_id: str, kdf: KdfParams, hello: Hello, fingerprint: str
    ) -> None:
        """Check this side's own inputs and keep what both confirmations cover."""
        _check_verifier(verifier)
        names.cluster_id(cluster_id)
        _kdf.check_params(kdf)
        check_version(hello)
        self._cluster_id = cluster_id
        self._kdf = kdf
        self._hello = hello
        self._fingerprint = _normalise_fingerprint(fingerprint)

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
        self._begin(verifier, cluster_id, kdf, hello, own_fingerprint)
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
        transcript = bootstrap_transcript(
            cluster_id=self._cluster_id,
            hello=self._hello,
            kdf=self._kdf,
            joiner_message=pake_message,
            control_message=self._challenge,
            fingerprint=self._fingerprint,
            csr_pem=csr_pem,
        )
        if not hmac.compare_digest(joiner_confirmation(key, transcript), confirmation):
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
        mac = control_confirmation(
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
        self._begin(verifier, cluster_id, kdf, hello, seen_fingerprint)
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
        self._public_key = _x509.load_pem_x509_csr(csr_pem).public_key()
        self._transcript = bootstrap_transcript(
            cluster_id=self._cluster_id,
            hello=self._hello,
            kdf=self._kdf,
            joiner_message=self._message,
            control_message=self._challenge,
            fingerprint=self._fingerprint,
            csr_pem=csr_pem,
        )
        confirmation = joiner_confirmation(self._key, self._transcript)
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
        expected = control_confirmation(
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
        if not is_ca(ca_cert):
            raise errors.BootstrapProtocolError("the control's CA certificate is not a CA")
        try:
            cert.verify_directly_issued_by(ca_cert)
        except (
            ValueError,
            TypeError,
            crypto_errors.InvalidSignature,
            crypto_errors.UnsupportedAlgorithm,
        ) as exc:
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


# --- checks ---------------------------------------------------------------------------------------


def _check_verifier(verifier: bytes) -> None:
    if not isinstance(verifier, bytes) or len(verifier) != _kdf.VERIFIER_BYTES:
        raise ValueError(f"the verifier must be {_kdf.VERIFIER_BYTES} bytes")


def check_version(hello: Hello) -> None:
    """Refuse a hello speaking a protocol version this node does not (the peer's fault)."""
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
