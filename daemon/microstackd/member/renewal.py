"""Every node renews its own certificates before they expire.

* Its **cluster certificate** (the mTLS port's, and what it calls others
  with): once less than ``--renew-before`` is left, the node makes a fresh
  key, sends a CSR for it over its existing mTLS channel (a compute: the
  control's ``ClusterService.RenewCertificate``; the control signs its own
  through ``sign_own``), writes the new key, certificate and trust bundle
  together, and raises ``renewed``: the wiring serves the new pair from the
  next TLS handshake on and sends a heartbeat at once, whose call is the
  first with the new certificate (the control then revokes the old serial).
* Its **bootstrap certificate** (self-signed, the bootstrap port's): a new
  key and certificate, raised as ``bootstrap_renewed``. Join tokens pin its
  fingerprint, so while a valid token exists the renewal waits, until half
  of ``--renew-before`` is left (docs/security.md, "Renewal").

A compute whose certificate expired (it was off for longer than what was
left of it) cannot renew it: no TLS handshake with the control accepts it.
It says so, and comes back with ``microstackctl join --token`` (a fresh
bootstrap that keeps its name and its Nova host).

Each renewal and each failure is logged; a failure is tried again at the
next look (every eighth of ``--renew-before``, at most every hour).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from microstackd import errors
from microstackd.config import DaemonConfig
from microstackd.enrolment.events import Signal
from microstackd.member.background import Background
from microstackd.model import BootstrapCertificate, ClusterRecord, NodeCredentials, Role
from microstackd.peers.cluster import ControlClient
from microstackd.store import Store
from microstackd.store.files import BOOTSTRAP_CERT, BOOTSTRAP_KEY, CA_CERT, NODE_CERT, NODE_KEY
from microstackd.trust import der, x509

log = logging.getLogger(__name__)

#: The control's own signer: a CSR in, (certificate, trust bundle) out.
SignOwn = Callable[[bytes], tuple[bytes, bytes]]


def _when(cert: x509.Certificate | der.Certificate) -> str:
    return cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC")


class Renewal:
    def __init__(
        self,
        config: DaemonConfig,
        store: Store,
        bootstrap: BootstrapCertificate,
        sign_own: SignOwn,
        renewed: Signal,
        bootstrap_renewed: Signal,
    ) -> None:
        self._config = config
        self._store = store
        self._bootstrap = bootstrap
        self._sign_own = sign_own
        self.renewed = renewed
        self.bootstrap_renewed = bootstrap_renewed
        self._renew_before = timedelta(seconds=config.renew_before)
        self._loop = Background(self._run)
        self._renewing = asyncio.Lock()
        #: The last failure (and expired notice) logged, to log each once.
        self._said = ""
        #: Renewals made since the start, per kind (for tests and logs).
        self.count = {"cluster": 0, "bootstrap": 0}

    def start(self) -> None:
        self._loop.start()

    async def stop(self) -> None:
        await self._loop.stop()

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except errors.MicrostackError as exc:  # a full disk, unreadable files
                self._say(logging.WARNING, f"certificate renewal failed reason={exc.message!r}")
            await asyncio.sleep(self._config.renewal_check)

    def _say(self, level: int, message: str) -> None:
        """Log a failure once until it changes (a renewal is always logged)."""
        if message != self._said:
            self._said = message
            log.log(level, message)

    async def check(self, at: datetime | None = None) -> None:
        """One look at this node's certificates; renew those that are due."""
        at = at or datetime.now(UTC)
        await self._check_bootstrap(at)
        cluster = self._store.cluster()
        if cluster is not None:
            await self._check_cluster(cluster, at)

    # ---------------------------------------------------------- cluster --

    async def _check_cluster(self, cluster: ClusterRecord, at: datetime) -> None:
        try:
            creds = self._store.credentials()
            cert = x509.read_cert(creds.cert_pem)
        except (errors.NotInitialised, ValueError):
            return  # joining, or leaving: nothing to renew
        if not x509.renewal_due(cert, at, self._renew_before):
            self._said = ""
            return
        if cluster.role is Role.COMPUTE and x509.expired(cert, at):
            self._say(
                logging.ERROR,
                f"certificate expired at {_when(cert)}: this node cannot reach its control any "
                "more; on the control run `microstackctl add-node "
                f"{self._config.node_name}`, then here `microstackctl join --token TOKEN` (it "
                "keeps its name and its Nova host)",
            )
            return
        try:
            await self._renew(cluster, at)
        except errors.MicrostackError as exc:
            self._say(
                logging.WARNING,
                f"certificate renewal failed expires={_when(cert)} reason={exc.message!r}",
            )

    async def _renew(self, cluster: ClusterRecord, at: datetime) -> x509.Certificate:
        """Renew now: a fresh key, its CSR signed, the three files written.
        One at a time: a renewal the control replaced is revoked, so the
        last one signed must be the last one written."""
        async with self._renewing:
            # What is on disk now: a renewal just before may have replaced it.
            return await self._renew_now(cluster, self._store.credentials(), at)

    async def _renew_now(
        self, cluster: ClusterRecord, creds: NodeCredentials, at: datetime
    ) -> x509.Certificate:
        cert = x509.load_cert(creds.cert_pem)
        started = time.perf_counter()
        key = x509.generate_key()
        csr = x509.make_csr(key, self._config.node_name)
        if cluster.role is Role.CONTROL:
            cert_pem, bundle = self._sign_own(csr)
        else:
            client = ControlClient(cluster, creds)
            try:
                cert_pem, bundle = await client.renew_certificate(csr)
            finally:
                await client.close()
        fresh = self._checked(key, cert_pem, bundle, at)
        self._store.write_secrets(
            {NODE_KEY: x509.key_to_pem(key), NODE_CERT: cert_pem, CA_CERT: bundle}
        )
        self._said = ""
        self.count["cluster"] += 1
        log.info(
            "certificate renewed node=%s serial=%x expires=%s previous=%x previous_expires=%s "
            "took=%.3fs",
            self._config.node_name, fresh.serial_number, _when(fresh),
            cert.serial_number, _when(cert), time.perf_counter() - started,
        )  # fmt: skip
        await self.renewed.emit()
        return fresh

    async def trust(self, bundle: bytes, renew: bool) -> str:
        """The control's CA rotation: trust the CAs of ``bundle`` from the next
        handshake on (the first signs), and renew under it when asked. The
        serial of the certificate this node holds afterwards (hex)."""
        cluster = self._store.cluster()
        if cluster is None:
            raise errors.NotInitialised("this node is in no cluster")
        try:
            cas = x509.load_bundle(bundle)
        except ValueError as exc:
            raise errors.InvalidArgument(f"the CA bundle is unusable: {exc}") from exc
        for ca in cas:
            try:
                theirs = x509.ca_cluster_id(ca)
            except (ValueError, errors.MicrostackError):
                theirs = ""
            if theirs != cluster.cluster_id:
                raise errors.PermissionDenied(
                    f"a CA of the bundle is not one of cluster {cluster.cluster_id}"
                )
        self._store.write_secret(CA_CERT, bundle)
        self._store.set_cluster(
            dataclasses.replace(
                cluster,
                ca_fingerprint=x509.fingerprint(cas[0]),
                ca_not_after=cas[0].not_valid_after_utc.timestamp(),
            )
        )
        log.info("trusting CAs %s", ",".join(x509.fingerprint(c)[:16] for c in cas))
        await self.renewed.emit()  # the mTLS port trusts them from its next handshake
        cert = x509.load_cert(self._store.credentials().cert_pem)
        if renew:
            cert = await self._renew(cluster, datetime.now(UTC))
        return format(cert.serial_number, "x")

    def _checked(
        self, key: x509.PrivateKey, cert_pem: bytes, bundle: bytes, at: datetime
    ) -> x509.Certificate:
        """The certificate the control sent, once it is for this key and
        this node and issued by a CA of the bundle (else PermissionDenied)."""
        try:
            x509.check_pair(x509.key_to_pem(key), cert_pem)
            cert = x509.load_cert(cert_pem)
            cas = x509.load_bundle(bundle)
        except ValueError as exc:
            raise errors.PermissionDenied(f"the control's renewal is unusable: {exc}") from exc
        if x509.identity_of(cert).name != self._config.node_name:
            raise errors.PermissionDenied("the control's renewal names another node")
        problems = []
        for ca in cas:
            try:
                x509.verify_issued_by(ca, cert, at)
                return cert
            except (errors.PermissionDenied, ValueError) as exc:
                problems.append(str(exc))
        raise errors.PermissionDenied(
            f"the control's renewal is not issued by a CA it sent: {'; '.join(problems)}"
        )

    # -------------------------------------------------------- bootstrap --

    async def _check_bootstrap(self, at: datetime) -> None:
        cert_pem = self._store.read_file(BOOTSTRAP_CERT)
        if cert_pem is None:
            return
        cert = x509.read_cert(cert_pem)
        if not x509.renewal_due(cert, at, self._renew_before):
            return
        left = cert.not_valid_after_utc - at
        valid = [t for t in self._store.tokens() if t.state_at(time.time()) == "valid"]
        if valid and left > self._renew_before / 2:
            self._say(
                logging.INFO,
                f"bootstrap certificate renewal waits for {len(valid)} valid join token(s), "
                f"which pin it, until {_when(cert)} minus half of --renew-before",
            )
            return
        key = x509.generate_key()
        fresh = x509.self_signed_bootstrap_certificate(
            key, at, lifetime=timedelta(seconds=self._config.bootstrap_cert_lifetime)
        )
        self._store.write_secrets(
            {BOOTSTRAP_KEY: x509.key_to_pem(key), BOOTSTRAP_CERT: x509.cert_to_pem(fresh)}
        )
        self._bootstrap.fingerprint = x509.fingerprint(fresh)
        self._bootstrap.not_after = fresh.not_valid_after_utc.timestamp()
        self.count["bootstrap"] += 1
        log.info(
            "bootstrap certificate renewed fingerprint=%s expires=%s previous=%s "
            "tokens_invalidated=%d",
            self._bootstrap.fingerprint, _when(fresh), x509.fingerprint(cert), len(valid),
        )  # fmt: skip
        await self.bootstrap_renewed.emit()
