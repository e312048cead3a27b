"""Where this node's keys and certificates live under the state dir, and
loading them for mTLS. Written only through ``Store.write_secret``."""

from __future__ import annotations

from dataclasses import dataclass

from microstackd import errors
from microstackd.store import Store

CA_KEY = "tls/ca.key"  # the control only
CA_CERT = "tls/ca.crt"
NODE_KEY = "tls/node.key"
NODE_CERT = "tls/node.crt"
BOOTSTRAP_KEY = "tls/bootstrap.key"
BOOTSTRAP_CERT = "tls/bootstrap.crt"


@dataclass(frozen=True)
class NodeCredentials:
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes


def load(store: Store) -> NodeCredentials:
    key, cert, ca = (store.read_file(n) for n in (NODE_KEY, NODE_CERT, CA_CERT))
    if key is None or cert is None or ca is None:
        raise errors.NotInitialised(
            f"this node's cluster key or certificates are missing from {store.state_dir / 'tls'}"
        )
    return NodeCredentials(key_pem=key, cert_pem=cert, ca_pem=ca)
