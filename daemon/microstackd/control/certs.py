"""Certificate renewal on the control: sign a member's renewal, renew its
own cluster-port certificate, and say in ``status`` which certificate is
close to expiry without having been renewed.

A member's renewal (``renew_member``) is signed for the identity the
control recorded (name, role, address, hostname), never for what the CSR
asks, exactly as at the bootstrap (``trust.x509``, rule 2). The new serial
is *pending*: the member's old certificate stays valid until its first
call with the new one, which ``member.callers`` turns into the node's
certificate, revoking the old serial (``Store.promote_certificate``). A
renewal the member never used is revoked when the next one is issued or
the node is removed.

No gRPC here: ``api/servicers/cluster.py`` translates.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from microstackd import errors
from microstackd.control.cluster import Cluster, now
from microstackd.model import NodeRecord, NodeState, TrustedCA
from microstackd.store.files import CA_CERT, CA_RETIRING_CERT, CA_RETIRING_KEY
from microstackd.trust import x509
from microstackd.trust.x509 import Identity

log = logging.getLogger(__name__)


class Certificates:
    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._store = cluster.store
        self._config = cluster.config

    @property
    def lifetime(self) -> timedelta:
        return timedelta(seconds=self._config.cert_lifetime)

    def trust_bundle(self) -> bytes:
        """Every CA certificate a member must trust, PEM."""
        bundle = self._store.read_file(CA_CERT)
        if bundle is None:
            raise errors.StorageError(f"{self._store.state_dir / CA_CERT} is missing")
        return bundle

    def retiring_ca(self) -> x509.CertificateAuthority | None:
        """The old CA during a CA rotation (None otherwise)."""
        key = self._store.read_file(CA_RETIRING_KEY)
        cert = self._store.read_file(CA_RETIRING_CERT)
        if key is None or cert is None:
            return None
        try:
            return x509.CertificateAuthority.from_pem(key, cert)
        except ValueError as exc:
            raise errors.StorageError(
                f"{self._store.state_dir / CA_RETIRING_KEY} or {CA_RETIRING_CERT} is not a "
                f"usable CA: {exc}"
            ) from exc

    def _sign(
        self, node: NodeRecord, csr_pem: bytes, ca: x509.CertificateAuthority | None = None
    ) -> tuple[bytes, x509.Identity]:
        if ca is None:
            ca, _verifier, _params = self._cluster.secrets()
        cert = x509.sign_csr(
            ca,
            csr_pem,
            node_name=node.name,
            role=node.role,
            address=node.address,
            hostname=node.hostname,
            now=now(),
            lifetime=self.lifetime,
        )
        return x509.cert_to_pem(cert), x509.identity_of(cert)

    def renew_member(self, identity: Identity, csr_pem: bytes) -> tuple[bytes, bytes]:
        """A member's new certificate for the key its CSR proves, and the
        trust bundle. The caller was authorised with its current certificate."""
        self._cluster.require()
        node = self._store.node(identity.name)
        if node is None or node.state is NodeState.REMOVED:
            raise errors.PermissionDenied(f"{identity.name} is not a member of this cluster")
        if node.name == self._config.node_name:
            raise errors.PermissionDenied("the control renews its own certificate itself")
        try:
            cert_pem, issued = self._sign(node, csr_pem)
        except errors.BootstrapProtocolError as exc:  # the CSR is the caller's mistake
            raise errors.InvalidArgument(f"renewal of {node.name} refused: {exc.message}") from exc
        serial = format(issued.serial, "x")
        self._store.set_pending_certificate(
            node.name, serial, issued.not_after.timestamp(), time.time()
        )
        log.info(
            "certificate renewed node=%s serial=%s replaces=%s expires=%s",
            node.name, serial[:16], node.cert_serial[:16], issued.not_after.isoformat(),
        )  # fmt: skip
        return cert_pem, self.trust_bundle()

    def renew_own(self, csr_pem: bytes) -> tuple[bytes, bytes]:
        """The control's own new certificate (cluster port, and its calls to
        agents), for the key its CSR proves. It is the control's at once:
        the control presents it from its next handshake on, and its old
        serial is revoked. During a CA rotation the old CA signs it, so that
        a member that has not moved yet still trusts the control."""
        self._cluster.require()
        me = self._store.node(self._config.node_name)
        if me is None:
            raise errors.NotControl("this control has no record of itself")
        cert_pem, issued = self._sign(me, csr_pem, self.retiring_ca())
        serial = format(issued.serial, "x")
        self._store.replace_certificate(me.name, serial, issued.not_after.timestamp(), time.time())
        return cert_pem, self.trust_bundle()


def expiry_warning(node: NodeRecord, at: float, renew_before: float) -> str:
    """Why ``node`` is shown ``warning`` (its certificate is close to expiry
    and was not renewed), or "" when it is not.

    A node renews once less than ``--renew-before`` is left and looks again
    every eighth of it; with half of it left, its renewals have failed (or
    it does not run)."""
    if node.state not in (NodeState.ACTIVE, NodeState.UNREACHABLE):
        return ""
    left = node.cert_not_after - at
    if left > renew_before / 2:
        return ""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(node.cert_not_after))
    if left <= 0:
        return (
            f"its certificate expired at {when}: it cannot reach the control any more; "
            f"make it a join token (`microstackctl add-node {node.name}`) and run "
            "`microstackctl join --token TOKEN` on it: it comes back under its name"
        )
    return (
        f"its certificate expires at {when} and was not renewed (is the node up and "
        "reaching the control? its log says why a renewal failed)"
    )


def trusted_cas(bundle: bytes) -> tuple[TrustedCA, ...]:
    """The CAs of a trust bundle for ``status``: the first signs, any other retires."""
    try:
        cas = x509.read_bundle(bundle)  # without cryptography: status on an idle node
    except ValueError:
        return ()
    return tuple(
        TrustedCA(
            x509.fingerprint(ca),
            ca.not_valid_after_utc.timestamp(),
            "signing" if i == 0 else "retiring",
        )
        for i, ca in enumerate(cas)
    )
