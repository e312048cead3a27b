"""The bootstrap transcript, the two key confirmations over it, and
``derive_key``: the wire construction ``trust.exchange`` runs (rules 3 and 4
there). Public so that tests can play a fake control; pinned by
tests/unit/test_security.py. Pure."""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import TYPE_CHECKING

from microstackd import lazy
from microstackd.trust.kdf import KdfParams

if TYPE_CHECKING:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf import hkdf

    from microstackd.trust.exchange import Hello
else:  # imported at the first exchange (microstackd.lazy)
    hashes = lazy.module("cryptography.hazmat.primitives.hashes")
    hkdf = lazy.module("cryptography.hazmat.primitives.kdf.hkdf")

# One HKDF "info" per use of the SPAKE2 session key (rule 3).
PURPOSE_CONFIRM_JOINER = b"microstackd/v1/bootstrap/confirm-joiner"
PURPOSE_CONFIRM_CONTROL = b"microstackd/v1/bootstrap/confirm-control"
#: The SPAKE2 password a join token's secret stands for (the secret itself is never stored).
PURPOSE_TOKEN_VERIFIER = b"microstackd/v1/token/verifier"

_TRANSCRIPT_LABEL = b"microstackd bootstrap transcript v1"
_RESULT_LABEL = b"microstackd bootstrap result v1"


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
    return hkdf.HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=purpose).derive(
        secret
    )


# --- keys, PEM, fingerprints ----------------------------------------------------------------------


def _frame(*fields: bytes) -> bytes:
    """Length-prefix every field so no two field lists encode the same (rule 4)."""
    return b"".join(struct.pack(">I", len(field)) + field for field in fields)


def _u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def bootstrap_transcript(
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


def joiner_confirmation(key: bytes, transcript: bytes) -> bytes:
    mac_key = derive_key(key, PURPOSE_CONFIRM_JOINER)
    return hmac.new(mac_key, transcript, hashlib.sha256).digest()


def control_confirmation(
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
