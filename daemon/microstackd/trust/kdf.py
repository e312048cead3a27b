"""The password verifier: scrypt, its bounded parameters, and the file the
control keeps it in.

Rules:

1. The cluster password never leaves the machine it was typed on. Only the
   verifier ``w = scrypt(NFC(password), salt)`` exists beyond that: stored by
   the control (``verifier.json``, mode 0600) and used by both sides as the
   SPAKE2 password (``trust.exchange``).
2. KDF parameters may come from a fake control, so they are bounded before
   any work is done (``log2_n`` 10..20, ``r`` 1..16, ``p`` 1..4, salt 16..64
   bytes, and at most 256 MiB of memory and 16x the default work in total).

Pure: no I/O.
"""

from __future__ import annotations

import json
import secrets
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

from microstackd import errors, lazy

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.kdf import scrypt
else:  # imported at the first password derived (microstackd.lazy)
    scrypt = lazy.module("cryptography.hazmat.primitives.kdf.scrypt")

VERIFIER_BYTES = 32

# KDF bounds (rule 2). Memory is 128 * r * N bytes; work is ~ N * r * p.
_LOG2_N = (10, 20)
_R = (1, 16)
_P = (1, 4)
_SALT = (16, 64)
_MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
_MAX_SCRYPT_WORK = 16 * (1 << 15) * 8 * 1  # 16x the default N * r * p


@dataclass(frozen=True)
class KdfParams:
    """scrypt parameters; bounded on construction (rule 2) because the joiner
    receives them from a control it does not trust yet."""

    salt: bytes
    log2_n: int = 15
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        check_params(self)


def new_kdf_params() -> KdfParams:
    """Default parameters with a fresh 16-byte salt, for a new cluster."""
    return KdfParams(salt=secrets.token_bytes(16))


def derive_verifier(password: str, params: KdfParams) -> bytes:
    """``scrypt(NFC(password), salt)``: the only password-derived secret kept.

    NFC so the same password typed on differently configured machines gives
    the same verifier.
    """
    check_params(params)
    if not password:
        raise errors.InvalidArgument("the cluster password is empty")
    secret = unicodedata.normalize("NFC", password).encode("utf-8")
    kdf = scrypt.Scrypt(
        salt=params.salt, length=VERIFIER_BYTES, n=1 << params.log2_n, r=params.r, p=params.p
    )
    return kdf.derive(secret)


# --- the verifier file ----------------------------------------------------------------------------


def encode_verifier(verifier: bytes, kdf: KdfParams) -> bytes:
    """The control's ``verifier.json``: the KDF parameters and the verifier."""
    return json.dumps(
        {
            "kdf": "scrypt",
            "salt": kdf.salt.hex(),
            "log2_n": kdf.log2_n,
            "r": kdf.r,
            "p": kdf.p,
            "verifier": verifier.hex(),
        }
    ).encode()


def decode_verifier(blob: bytes) -> tuple[bytes, KdfParams]:
    """Read ``verifier.json`` back (raises ``errors.StorageError`` when it is not one)."""
    try:
        data = json.loads(blob)
        kdf = KdfParams(
            salt=bytes.fromhex(data["salt"]), log2_n=data["log2_n"], r=data["r"], p=data["p"]
        )
        verifier = bytes.fromhex(data["verifier"])
    except (ValueError, KeyError, TypeError, errors.BootstrapProtocolError) as exc:
        raise errors.StorageError(f"the password verifier file is malformed: {exc}") from exc
    return verifier, kdf


# --- checks ---------------------------------------------------------------------------------------


def check_params(params: KdfParams) -> None:
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
