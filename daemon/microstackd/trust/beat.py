"""Heartbeat datagrams: a member's sign of life in one UDP datagram, and the
control's acknowledgement, each sealed with a key the control handed the
member over mTLS (``HeartbeatResponse.datagram_key``). Pure: no socket, no
clock.

A beat is ``b"MSB1" | key id (8) | counter (8) | HMAC-SHA256 (16)`` and its
acknowledgement ``b"MSBA" | key id (8) | counter (8) | interval (2) |
HMAC-SHA256 (16)``: the MAC covers everything before it, the magic included,
so that a beat is never taken for an acknowledgement or the other way
round. The counter grows with every beat of a session, and a session's
beats are taken only in increasing order (``Session.take``): a replayed or
reordered datagram is dropped. Nothing in a datagram is secret; it says only
that the holder of the session's key sent it now.

An acknowledgement is 42 bytes to a beat's 36 and is sent only for a beat
whose MAC checked and whose counter was new, so no one without the key can
make the control send anything (no reflection, no amplification)."""

from __future__ import annotations

import hmac
import secrets
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from microstackd.trust.x509 import Identity

BEAT_MAGIC = b"MSB1"
ACK_MAGIC = b"MSBA"
#: Bytes of HMAC-SHA256 kept: 128 bits, as much as a forger must guess.
MAC_BYTES = 16
KEY_BYTES = 32

_BEAT = struct.Struct("!4sQQ")
_ACK = struct.Struct("!4sQQH")
BEAT_SIZE = _BEAT.size + MAC_BYTES
ACK_SIZE = _ACK.size + MAC_BYTES
#: Largest interval an acknowledgement can carry, seconds.
MAX_INTERVAL = 0xFFFF


def new_key() -> tuple[int, bytes]:
    """A fresh session: (its key id, a random 64-bit number; its key)."""
    return secrets.randbits(64), secrets.token_bytes(KEY_BYTES)


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.digest(key, body, "sha256")[:MAC_BYTES]


def seal_beat(key_id: int, key: bytes, counter: int) -> bytes:
    body = _BEAT.pack(BEAT_MAGIC, key_id, counter)
    return body + _mac(key, body)


def beat_key_id(data: bytes) -> int | None:
    """The key id a datagram claims to be a beat under (not yet checked), or
    None: it is not a beat at all (its size or magic)."""
    if len(data) != BEAT_SIZE or data[:4] != BEAT_MAGIC:
        return None
    return int.from_bytes(data[4:12], "big")


def open_beat(data: bytes, key: bytes) -> int | None:
    """The counter of a beat sealed with ``key``, or None: it is not one (its
    size, its magic or its MAC)."""
    if len(data) != BEAT_SIZE:
        return None
    body = data[: _BEAT.size]
    if not hmac.compare_digest(_mac(key, body), data[_BEAT.size :]):
        return None
    magic, _, counter = _BEAT.unpack(body)
    return counter if magic == BEAT_MAGIC else None


def seal_ack(key_id: int, key: bytes, counter: int, interval: int) -> bytes:
    body = _ACK.pack(ACK_MAGIC, key_id, counter, max(1, min(interval, MAX_INTERVAL)))
    return body + _mac(key, body)


def open_ack(data: bytes, key_id: int, key: bytes) -> tuple[int, int] | None:
    """(the counter acknowledged, the interval the control asks for) of an
    acknowledgement of session ``key_id`` sealed with ``key``, or None: it is
    not one."""
    if len(data) != ACK_SIZE:
        return None
    body = data[: _ACK.size]
    if not hmac.compare_digest(_mac(key, body), data[_ACK.size :]):
        return None
    magic, got_id, counter, interval = _ACK.unpack(body)
    if magic != ACK_MAGIC or got_id != key_id:
        return None
    return counter, interval


class Session:
    """The control's side of one member's session: who holds the key (the
    identity of the certificate it was issued to), until when it is good,
    and the highest counter taken so far."""

    __slots__ = ("identity", "serial", "key_id", "key", "expires", "cert_expires", "counter")

    def __init__(self, identity: Identity, key_id: int, key: bytes, expires: float) -> None:
        self.identity = identity
        #: The serial (hex) of the certificate the key was issued to.
        self.serial = format(identity.serial, "x")
        self.key_id = key_id
        self.key = key
        #: The session is over at this time (and the member asks for a new key).
        self.expires = expires
        #: The not-after of that certificate: no beat is taken past it.
        self.cert_expires = identity.not_after.timestamp()
        self.counter = -1

    def take(self, data: bytes, now: float) -> int | None:
        """The counter of a beat of this session that is good now (sealed with
        its key, newer than every beat taken, within the session's and the
        certificate's lifetime), which is then the newest taken; None for
        anything else."""
        if now >= self.expires or now >= self.cert_expires:
            return None
        counter = open_beat(data, self.key)
        if counter is None or counter <= self.counter:
            return None
        self.counter = counter
        return counter
