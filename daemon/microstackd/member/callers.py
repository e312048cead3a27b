"""Which certificate may make which kind of call on this node: the one
answer the access interceptor (``api/access.py``) asks for every call on the
mTLS port, after TLS has checked the chain to the cluster CA.

* On the control: a member's own, unrevoked certificate for member calls;
  only the control itself for control calls. A member's first call with
  its renewed certificate makes it the member's, and revokes the old one.
* On a compute: only its control node, and only for control calls (its agent).
"""

from __future__ import annotations

import logging
import time

from microstackd import errors
from microstackd.model import Access, NodeState, Role
from microstackd.store import Store
from microstackd.trust.x509 import Identity

log = logging.getLogger(__name__)


class Callers:
    def __init__(self, store: Store) -> None:
        self._store = store

    def authorise(self, identity: Identity, access: Access) -> None:
        """Raise ``errors.PermissionDenied`` to refuse the call."""
        cluster = self._store.cluster()
        if cluster is None:
            raise errors.PermissionDenied("this node is in no cluster")
        if cluster.role is Role.CONTROL:
            self._member(identity)
            if access is Access.CONTROL:
                raise errors.PermissionDenied("only the control node may make this call")
            return
        if access is not Access.CONTROL:
            raise errors.PermissionDenied("a compute node serves only its control node")
        if identity.role is not Role.CONTROL or identity.name != cluster.control_name:
            raise errors.PermissionDenied(
                f"{identity.name} is not the control node of this node's cluster"
            )

    def _member(self, identity: Identity) -> None:
        serial = format(identity.serial, "x")
        if self._store.is_revoked(serial):
            raise errors.PermissionDenied(
                f"certificate {serial[:16]} of {identity.name} is revoked"
            )
        node = self._store.node(identity.name)
        if (
            node is not None
            and node.state is not NodeState.REMOVED
            and node.pending_serial == serial
            and self._store.promote_certificate(node.name, serial, time.time())
        ):
            # Its first call with its renewed certificate: the old one is revoked now.
            log.info(
                "renewed certificate in use node=%s serial=%s revoked=%s",
                node.name, serial[:16], node.cert_serial[:16],
            )  # fmt: skip
            return
        if node is None or node.cert_serial != serial or node.state is NodeState.REMOVED:
            raise errors.PermissionDenied(
                f"{identity.name} (certificate {serial[:16]}) is not a member of this cluster"
            )
