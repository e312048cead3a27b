"""The control's cluster: create it (``init``), keep its secrets (the CA and
the password verifier), and read control.yaml; what the other parts of the
control (``bootstrap``, ``tokens``, ``enrol``, ``members``) stand on.

No gRPC here: ``api/servicers`` translate requests into these calls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from datetime import UTC, datetime, timedelta

from microstackd import errors
from microstackd.cloud import CloudRef
from microstackd.cloud import resolve as resolve_cloud
from microstackd.config import DaemonConfig, Ports
from microstackd.control import config as control_config
from microstackd.control.plane import ControlPlane
from microstackd.enrolment import machine as enrolment
from microstackd.enrolment.events import Signal
from microstackd.enrolment.runner import Runner, StepAction, StepContext
from microstackd.model import ClusterRecord, NodeRecord, NodeState, Role
from microstackd.store import Store
from microstackd.store.files import CA_CERT, CA_KEY, NODE_CERT, NODE_KEY, VERIFIER
from microstackd.trust import kdf, names, x509

log = logging.getLogger(__name__)

#: A CRL signed this long ago is signed again (it is valid for 30 days).
CRL_REUSE = timedelta(hours=1)


def now() -> datetime:
    return datetime.now(UTC)


class Cluster:
    def __init__(
        self,
        config: DaemonConfig,
        store: Store,
        runner: Runner,
        ports: Ports,
        joined: Signal,
        plane: ControlPlane | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self._runner = runner
        #: The bootstrap and cluster ports this daemon listens on.
        self._ports = ports
        #: Raised once this node is the control of a cluster (the wiring then
        #: serves the mTLS port).
        self._joined = joined
        #: The control role (the OpenStack control plane), run as init's middle steps.
        self._plane = plane
        self._control_config_cache: tuple[int, control_config.ControlConfig] | None = None
        self._ca: x509.CertificateAuthority | None = None
        self._verifier: tuple[bytes, kdf.KdfParams] | None = None
        #: The last reason the secrets could not be read (logged once).
        self._secrets_error = ""
        #: The last CRL signed: the CA and the serials it was signed for, when, its PEM.
        self._crl: tuple[x509.CertificateAuthority, tuple[str, ...], datetime, bytes] | None = None

    # ------------------------------------------------------------ init --

    def init(self, password: str, address: str) -> int:
        """Start (or resume) creating the cluster; return the seq to follow from."""
        password = names.password(password)
        address = names.ip_address(address, "control address")
        name = self.config.node_name
        cluster = self.store.cluster()
        if cluster is not None:
            me = self.store.node(name)
            if cluster.role is not Role.CONTROL:
                raise errors.AlreadyInitialised(
                    f"this node is already a compute node of cluster {cluster.cluster_id} "
                    f"(control {cluster.control_name} at {cluster.control_address})"
                )
            if me is not None and me.state is NodeState.ACTIVE:
                raise errors.AlreadyInitialised(
                    f"this node is already the control node of cluster {cluster.cluster_id}; "
                    "nothing was changed"
                )
        if self._runner.running(name):
            raise errors.AlreadyInitialised("an init is already running on this node")
        after = self.store.last_seq(name)
        actions: dict[str, StepAction] = {
            enrolment.CREATE_CLUSTER: lambda ctx: self._create_cluster(ctx, password, address),
            enrolment.DONE: self._control_done,
        }
        plan, titles = enrolment.CONTROL_PLAN, None
        together: tuple[enrolment.Group, ...] = ()
        if self._plane is not None:
            plan = (plan[0], *self._plane.plan(), *plan[1:])
            actions.update(self._plane.actions(self.load_control_config, init=True))
            titles = self._plane.titles()
            together = self._plane.groups()
        self._runner.ensure_running(name, plan, actions, titles, together)
        return after

    def _existing_ca(self) -> x509.CertificateAuthority | None:
        """The CA an interrupted init already wrote (before its commit point),
        which a resumed init keeps: ``ca.key`` is never overwritten."""
        key, cert = self.store.read_file(CA_KEY), self.store.read_file(CA_CERT)
        if key is None and cert is None:
            return None
        try:
            if key is None or cert is None:
                raise ValueError("one of the two files is missing")
            return x509.CertificateAuthority.from_pem(key, cert)
        except ValueError as exc:
            raise errors.StorageError(
                f"{self.store.state_dir / CA_KEY} and {CA_CERT} are there but unusable ({exc}); "
                "init will not replace a cluster CA: move both away if no node holds a "
                "certificate from it, then run init again"
            ) from exc

    async def _create_cluster(self, ctx: StepContext, password: str, address: str) -> str:
        at = now()
        params = kdf.new_kdf_params()
        await ctx.progress("deriving the password verifier (scrypt)", 10)
        verifier = await asyncio.to_thread(kdf.derive_verifier, password, params)
        ca = self._existing_ca()
        if ca is None:
            ca = x509.create_ca(secrets.token_hex(8), at)
            self.store.write_secret(CA_KEY, x509.key_to_pem(ca.key))
            self.store.write_secret(CA_CERT, x509.cert_to_pem(ca.cert))
        cluster_id = x509.ca_cluster_id(ca.cert)
        key = x509.generate_key()
        cert = x509.issue_certificate(
            ca,
            key.public_key(),
            node_name=self.config.node_name,
            role=Role.CONTROL,
            address=address,
            hostname=self.config.hostname,
            now=at,
            lifetime=timedelta(seconds=self.config.cert_lifetime),
        )
        await ctx.progress("writing the cluster CA and this node's certificate", 60)
        control_config.ensure(self.config.control_config_path, address)
        store = self.store
        store.write_secret(NODE_KEY, x509.key_to_pem(key))
        store.write_secret(NODE_CERT, x509.cert_to_pem(cert))
        store.write_secret(VERIFIER, kdf.encode_verifier(verifier, params))
        identity = x509.identity_of(cert)
        store.put_node(
            NodeRecord(
                name=self.config.node_name,
                role=Role.CONTROL,
                address=address,
                hostname=self.config.hostname,
                state=NodeState.ENROLLING,
                message="",
                cert_serial=format(identity.serial, "x"),
                cert_not_after=identity.not_after.timestamp(),
                joined=time.time(),
            )
        )
        bootstrap_port, cluster_port = self._ports.bootstrap, self._ports.cluster
        # The commit point: from here on this node is the control of a cluster.
        store.set_cluster(
            ClusterRecord(
                cluster_id=cluster_id,
                role=Role.CONTROL,
                control_name=self.config.node_name,
                control_address=address,
                bootstrap_port=bootstrap_port,
                cluster_port=cluster_port,
                ca_fingerprint=x509.fingerprint(ca.cert),
                ca_not_after=ca.cert.not_valid_after_utc.timestamp(),
            )
        )
        self._ca, self._verifier = ca, (verifier, params)
        await self._joined.emit()
        return (
            f"cluster {cluster_id} created; CA fingerprint "
            f"{x509.fingerprint(ca.cert)[:16]}…, listening for joins on "
            f"{names.format_host_port(address, bootstrap_port)}"
        )

    async def _control_done(self, ctx: StepContext) -> str:
        cluster = self.require()
        where = names.format_host_port(cluster.control_address, cluster.bootstrap_port)
        return (
            f"{ctx.node} is the control node of cluster {cluster.cluster_id}; "
            f"computes join with `microstackctl join {where}`"
        )

    def resume(self) -> None:
        """At start-up, on a control: a certificate issued before controls
        carried ``CONTROL_SERVER_NAME`` (the name members now dial) is issued
        again for the same key, so that its members keep reaching it."""
        cluster = self.store.cluster()
        if cluster is None or cluster.role is not Role.CONTROL:
            return
        key_pem, cert_pem = self.store.read_file(NODE_KEY), self.store.read_file(NODE_CERT)
        me = self.store.node(self.config.node_name)
        if key_pem is None or cert_pem is None or me is None:
            return
        if x509.CONTROL_SERVER_NAME in x509.dns_names(x509.read_cert(cert_pem)):
            return  # read without cryptography (trust.der): the idle start-up path
        ca, _verifier, _params = self.secrets()
        fresh = x509.issue_certificate(
            ca,
            x509.load_key(key_pem).public_key(),
            node_name=me.name,
            role=Role.CONTROL,
            address=me.address,
            hostname=me.hostname,
            now=now(),
            lifetime=timedelta(seconds=self.config.cert_lifetime),
        )
        self.store.write_secret(NODE_CERT, x509.cert_to_pem(fresh))
        identity = x509.identity_of(fresh)
        self.store.set_certificate(
            me.name, format(identity.serial, "x"), identity.not_after.timestamp()
        )
        log.info(
            "control certificate issued again with its member-facing name name=%s serial=%x",
            x509.CONTROL_SERVER_NAME,
            identity.serial,
        )

    # --------------------------------------------------------- secrets --

    def require(self) -> ClusterRecord:
        """The cluster this node is the control of, or ``errors.NotControl``."""
        cluster = self.store.cluster()
        if cluster is None or cluster.role is not Role.CONTROL:
            raise errors.NotControl(
                "this node is not the control node of a cluster (run `microstackctl init "
                "--role control` on it first)"
            )
        return cluster

    def secrets(self) -> tuple[x509.CertificateAuthority, bytes, kdf.KdfParams]:
        """The cluster CA and the password verifier with its KDF parameters.

        Unreadable ones are an error for the operator (logged once, naming the
        file and the cause) and a plain INTERNAL for the caller, who may be a
        stranger on the bootstrap port: no parser's text reaches it."""
        if self._ca is None or self._verifier is None:
            try:
                self._ca, self._verifier = self._load_secrets()
            except errors.StorageError as exc:
                if self._secrets_error != exc.message:
                    self._secrets_error = exc.message
                    log.error("cluster secrets unreadable error=%r", exc.message)
                raise errors.StorageError(
                    "the control node cannot check the password or token: its cluster secrets "
                    "are unreadable (its log names the file); its operator must restore them "
                    "from a backup"
                ) from None
        return self._ca, *self._verifier

    def reload_secrets(self) -> None:
        """The CA files changed (a CA rotation): read them again at next use."""
        self._ca = None

    def _load_secrets(self) -> tuple[x509.CertificateAuthority, tuple[bytes, kdf.KdfParams]]:
        read = {name: self.store.read_file(name) for name in (CA_KEY, CA_CERT, VERIFIER)}
        missing = [name for name, data in read.items() if data is None]
        if missing:
            raise errors.StorageError(f"missing: {', '.join(missing)} in {self.store.state_dir}")
        key, cert, blob = read[CA_KEY], read[CA_CERT], read[VERIFIER]
        assert key is not None and cert is not None and blob is not None
        try:
            ca = x509.CertificateAuthority.from_pem(key, cert)
        except ValueError as exc:
            raise errors.StorageError(
                f"{self.store.state_dir / CA_KEY} or {CA_CERT} is not a usable CA: {exc}"
            ) from exc
        try:
            verifier = kdf.decode_verifier(blob)
        except errors.StorageError as exc:
            raise errors.StorageError(f"{self.store.state_dir / VERIFIER}: {exc.message}") from exc
        return ca, verifier

    def revocation_list(self) -> bytes:
        """The CRL of every revoked node certificate (PEM). Signed again only
        when a serial was revoked, the CA changed or the last one is
        ``CRL_REUSE`` old: every join asked for a fresh signature (once for
        its configuration, once more to configure the node) of the same list."""
        ca, _verifier, _kdf = self.secrets()
        serials = tuple(sorted(set(self.store.revoked_serials())))
        at = now()
        held = self._crl
        if held is not None:
            held_ca, held_serials, signed_at, pem = held
            if (
                held_ca is ca
                and held_serials == serials
                and signed_at <= at < signed_at + CRL_REUSE
            ):
                return pem
        pem = x509.revocation_list(ca, list(serials), at)
        self._crl = (ca, serials, at, pem)
        return pem

    def load_control_config(self) -> control_config.ControlConfig:
        """control.yaml, re-read only when the file changed (every join needs
        it twice; parsing and re-dumping it was a measurable part of a join)."""
        cluster = self.require()
        path = self.config.control_config_path
        try:
            stamp = path.stat().st_mtime_ns
        except OSError:
            stamp = -1
        cached = self._control_config_cache
        if cached is not None and cached[0] == stamp:
            return cached[1]
        config = control_config.ensure(path, cluster.control_address)
        try:
            self._control_config_cache = (path.stat().st_mtime_ns, config)
        except OSError:
            self._control_config_cache = None
        return config

    def cloud(self) -> CloudRef | None:
        """The control's cloud: control.yaml's ``cloud`` section, or ``OS_CLOUD``."""
        return resolve_cloud(dict(self.load_control_config().cloud), os.environ)
