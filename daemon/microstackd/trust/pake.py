"""SPAKE2 over Ed25519, with libsodium doing the group arithmetic.

The same protocol as the ``spake2`` package (0.9, its default Ed25519
parameters), bit for bit: same M and N, same password scalar, same messages
(one side byte then a 32-byte point), same session key. Only the arithmetic
moved: the reference does it in pure Python (~7 ms per side per exchange
here), libsodium in ~0.25 ms. ``tests/unit/test_pake.py`` checks messages
and keys against the reference for the same randomness, and interoperation
both ways.

One side, for password ``pw`` (already a high-entropy verifier here) and
identities ``id_a``, ``id_b``::

    w = HKDF-SHA256(pw, salt="", info="SPAKE2 pw", 48 bytes) as a big-endian integer mod L
    x = 64 random bytes as a big-endian integer mod L
    A sends  "A" || x*B + w*M           B sends  "B" || y*B + w*N
    A: K = x*(Y - w*N)                  B: K = y*(X - w*M)
    key = SHA256(SHA256(pw) || SHA256(id_a) || SHA256(id_b) || X || Y || K)

A peer's point must be a canonical encoding of a point of the prime-order
subgroup, not of small order (``crypto_core_ed25519_is_valid_point``), and
not our own message reflected back; a K equal to the identity is refused
too. Each object runs ``start`` then ``finish``, once each; any failure
spends it. Pure: no I/O.

libsodium (PyNaCl, ~0.7 MB resident) is imported at the first exchange, not
with this module: a daemon that is not bootstrapping anyone never needs it.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

from microstackd import lazy

if TYPE_CHECKING:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf import hkdf
else:  # imported at the first exchange, as libsodium is (microstackd.lazy)
    hashes = lazy.module("cryptography.hazmat.primitives.hashes")
    hkdf = lazy.module("cryptography.hazmat.primitives.kdf.hkdf")

__all__ = ["M", "MESSAGE_BYTES", "N", "PakeError", "Spake2A", "Spake2B", "password_scalar"]

#: The ``spake2`` package's M and N: hashes of the strings "M" and "N" to
#: points of the prime-order subgroup, so nobody knows their discrete logs.
M = bytes.fromhex("15cfd18e385952982b6a8f8c7854963b58e34388c8e6dae891db756481a02312")
N = bytes.fromhex("f04f2e7eb734b2a8f8b472eaf9c3c632576ac64aea650b496a8a20ff00e583c3")

SIDE_A = b"A"
SIDE_B = b"B"
#: The side byte and a point (libsodium's ``crypto_core_ed25519_BYTES``).
MESSAGE_BYTES = 1 + 32

_ENTROPY_BYTES = 64
_PASSWORD_SCALAR_BYTES = 32 + 16  # oversized, so the reduction mod L is unbiased


class PakeError(ValueError):
    """The peer's message is unusable, or the exchange was misused."""


def password_scalar(password: bytes) -> bytes:
    """``w``: the password as a scalar mod L, little-endian, as libsodium takes it."""
    oversized = hkdf.HKDF(
        algorithm=hashes.SHA256(),
        length=_PASSWORD_SCALAR_BYTES,
        salt=b"",
        info=b"SPAKE2 pw",
    ).derive(password)
    return _reduce_big_endian(oversized)


def _reduce_big_endian(value: bytes) -> bytes:
    """A big-endian integer (at most 64 bytes) mod L, as 32 little-endian bytes."""
    from nacl import bindings

    little = value[::-1].ljust(bindings.crypto_core_ed25519_NONREDUCEDSCALARBYTES, b"\0")
    return bindings.crypto_core_ed25519_scalar_reduce(little)


class _Spake2:
    _side: bytes = b""
    _blinding: bytes = b""
    _unblinding: bytes = b""

    def __init__(
        self, password: bytes, id_a: bytes, id_b: bytes, *, entropy: bytes | None = None
    ) -> None:
        for name, value in (("password", password), ("id_a", id_a), ("id_b", id_b)):
            if not isinstance(value, bytes):
                raise TypeError(f"{name} must be bytes, not {type(value).__name__}")
        if entropy is None:
            entropy = os.urandom(_ENTROPY_BYTES)
        if len(entropy) != _ENTROPY_BYTES:
            raise ValueError(f"entropy must be {_ENTROPY_BYTES} bytes")
        self._password = password
        self._ids = (id_a, id_b)
        self._w = password_scalar(password)
        self._x = _reduce_big_endian(entropy)
        self._outbound = b""
        self._state = "new"

    def start(self) -> bytes:
        """Our message: the side byte and ``x*B + w*blinding``."""
        if self._state != "new":
            self._state = "spent"
            raise PakeError("start() may be called only once")
        self._state = "started"
        from nacl import bindings
        from nacl.exceptions import CryptoError

        try:
            element = bindings.crypto_core_ed25519_add(
                bindings.crypto_scalarmult_ed25519_base_noclamp(self._x),
                bindings.crypto_scalarmult_ed25519_noclamp(self._w, self._blinding),
            )
        except CryptoError as exc:  # a zero scalar: probability 2^-252
            self._state = "spent"
            raise PakeError(f"cannot compute the SPAKE2 message: {exc}") from exc
        self._outbound = element
        return self._side + element

    def finish(self, message: bytes) -> bytes:
        """The 32-byte session key, from the peer's message."""
        if self._state != "started":
            was, self._state = self._state, "spent"
            if was == "new":
                raise PakeError("finish() before start()")
            raise PakeError("finish() may be called only once")
        self._state = "spent"
        if len(message) != MESSAGE_BYTES:
            raise PakeError(
                f"wrong length: a SPAKE2 message is {MESSAGE_BYTES} bytes, not {len(message)}"
            )
        side, inbound = message[:1], message[1:]
        from nacl import bindings
        from nacl.exceptions import CryptoError

        if side not in (SIDE_A, SIDE_B) or side == self._side:
            raise PakeError(f"SPAKE2 message from the wrong side ({side!r})")
        if not bindings.crypto_core_ed25519_is_valid_point(inbound):
            raise PakeError("the peer's SPAKE2 message is not a point of the prime-order group")
        if inbound == self._outbound:
            raise PakeError("the peer's SPAKE2 message is our own, reflected")
        try:
            unblinded = bindings.crypto_core_ed25519_sub(
                inbound, bindings.crypto_scalarmult_ed25519_noclamp(self._w, self._unblinding)
            )
            shared = bindings.crypto_scalarmult_ed25519_noclamp(self._x, unblinded)
        except CryptoError as exc:  # the identity: the peer sent exactly w*unblinding
            raise PakeError("the peer's SPAKE2 message gives no shared secret") from exc
        x_msg, y_msg = (
            (self._outbound, inbound) if self._side == SIDE_A else (inbound, self._outbound)
        )
        id_a, id_b = self._ids
        transcript = b"".join(
            (
                hashlib.sha256(self._password).digest(),
                hashlib.sha256(id_a).digest(),
                hashlib.sha256(id_b).digest(),
                x_msg,
                y_msg,
                shared,
            )
        )
        return hashlib.sha256(transcript).digest()


class Spake2A(_Spake2):
    """Side A (the joiner here): blinds with M."""

    _side = SIDE_A
    _blinding = M
    _unblinding = N


class Spake2B(_Spake2):
    """Side B (the control here): blinds with N."""

    _side = SIDE_B
    _blinding = N
    _unblinding = M
