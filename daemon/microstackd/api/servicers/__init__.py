"""One servicer a service: ``admin`` (the Unix socket), ``bootstrap`` (the
bootstrap port), ``cluster`` and ``agent`` (the mTLS port). No identity
checks here (``api/access.py`` did them) and no error mapping (it does that
too)."""

from __future__ import annotations

from typing import Any, TypeAlias

from microstackd import errors
from microstackd.api.access import CALLER
from microstackd.trust.x509 import Identity

Context: TypeAlias = Any  # grpc.aio.ServicerContext; grpc ships no types


def caller() -> Identity:
    identity = CALLER.get()
    if identity is None:  # the access table guarantees a caller here
        raise errors.PermissionDenied("no verified caller")
    return identity


def source(context: Context) -> str:
    """The caller's IP address from gRPC's peer string (ipv4:1.2.3.4:5, ipv6:[::1]:5)."""
    peer = str(context.peer())
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.index("]")]
    return rest.rpartition(":")[0] or peer
