"""One-time join tokens: what `add-node` prints and `join --token` reads.

A token carries the control's bootstrap addresses, the fingerprints of the
control's bootstrap certificate and of the cluster CA, the node name it is
for, its expiry, a public id and a 256-bit secret. The secret is never sent:
both sides use ``derive_key(secret, PURPOSE_TOKEN_VERIFIER)`` (``trust.transcript``) as the
SPAKE2 password, exactly like the password verifier, so an eavesdropper of
the join learns nothing usable, and a control that cannot show the
fingerprinted certificate never sees a message that depends on the secret.
The control keeps only that verifier. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from dataclasses import dataclass

from microstackd import errors
from microstackd.trust import names
from microstackd.trust.transcript import PURPOSE_TOKEN_VERIFIER, derive_key

PREFIX = "mst1."
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[0-9a-f]{16}")
MAX_TTL = 30 * 24 * 3600


@dataclass(frozen=True)
class JoinToken:
    id: str
    name: str
    controls: tuple[str, ...]
    bootstrap_fingerprint: str
    ca_fingerprint: str
    secret: bytes
    expires: int

    @property
    def verifier(self) -> bytes:
        return verifier(self.secret)


def verifier(secret: bytes) -> bytes:
    return derive_key(secret, PURPOSE_TOKEN_VERIFIER)


def new(
    name: str,
    controls: tuple[str, ...],
    bootstrap_fingerprint: str,
    ca_fingerprint: str,
    expires: int,
) -> JoinToken:
    return JoinToken(
        id=secrets.token_hex(8),
        name=name,
        controls=controls,
        bootstrap_fingerprint=bootstrap_fingerprint,
        ca_fingerprint=ca_fingerprint,
        secret=secrets.token_bytes(32),
        expires=expires,
    )


def encode(token: JoinToken) -> str:
    body = {
        "v": 1,
        "id": token.id,
        "name": token.name,
        "controls": list(token.controls),
        "bootstrap_fp": token.bootstrap_fingerprint,
        "ca_fp": token.ca_fingerprint,
        "secret": base64.urlsafe_b64encode(token.secret).decode().rstrip("="),
        "exp": token.expires,
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    return PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(text: str) -> JoinToken:
    bad = errors.InvalidArgument(
        "this is not a microstackd join token (copy the whole line `microstackctl add-node` "
        "printed, starting with 'mst1.')"
    )
    text = text.strip()
    if not text.startswith(PREFIX) or len(text) > 4096:
        raise bad
    payload = text[len(PREFIX) :]
    try:
        body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        secret = base64.urlsafe_b64decode(body["secret"] + "=" * (-len(body["secret"]) % 4))
        token = JoinToken(
            id=str(body["id"]),
            name=str(body["name"]),
            controls=tuple(str(c) for c in body["controls"]),
            bootstrap_fingerprint=str(body["bootstrap_fp"]),
            ca_fingerprint=str(body["ca_fp"]),
            secret=secret,
            expires=body["exp"],
        )
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise bad from exc
    if (
        body.get("v") != 1
        or not _ID.fullmatch(token.id)
        or len(token.secret) != 32
        or not token.controls
        or not _HEX64.fullmatch(token.bootstrap_fingerprint)
        or not _HEX64.fullmatch(token.ca_fingerprint)
        or type(token.expires) is not int
    ):
        raise bad
    try:
        names.node_name(token.name)
    except errors.InvalidArgument:
        raise bad from None
    return token
