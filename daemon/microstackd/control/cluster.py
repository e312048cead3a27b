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
from datetime import UTC, datetime

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
        if self._plane is not None:
            plan = (plan[0], *self._plane.plan(), *plan[1:])
            actions.update(self._plane.actions(self.load_control_config))
            titles = self._plane.titles()
        self._runner.ensure_running(name, plan, actions, titles)
        return after

    async def _create_cluster(self, ctx: StepContext, password: str, address: str) -> str:
        at = now()
        cluster_id = secrets.token_hex(8)
        params = kdf.new_kdf_params()
        await ctx.progress("deriving the password verifier (scrypt)", 10)
        verifier = await asyncio.to_thread(kdf.derive_verifier, password, params)
        ca = x509.create_ca(cluster_id, at)
        key = x509.generate_key()
        cert = x509.issue_certificate(
            ca,
            key.public_key(),
            node_name=self.config.node_name,
            role=Role.CONTROL,
            address=address,
            hostname=self.config.hostname,
            now=at,
        )
        await ctx.progress("writing the cluster CA and this node's certificate", 60)
        control_config.ensure(self.config.control_config_path, address)
        store = self.store
        store.write_secret(CA_KEY, x509.key_to_pem(ca.key))
        store.write_secret(CA_CERT, x509.cert_to_pem(ca.cert))
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
        """The cluster CA and the password verifier with its KDF parameters."""
        if self._ca is None or self._verifier is None:
            key, cert, blob = (
                self.store.read_file(CA_KEY),
                self.store.read_file(CA_CERT),
                self.store.read_file(VERIFIER),
            )
            if key is None or cert is None or blob is None:
                raise errors.StorageError("the cluster CA or password verifier is missing")
            self._ca = x509.CertificateAuthority(key=x509.load_key(key), cert=x509.load_cert(cert))
            self._verifier = kdf.decode_verifier(blob)
        return self._ca, *self._verifier

    def revocation_list(self) -> bytes:
        """The CRL of every revoked node certificate (PEM), signed now."""
        ca, _verifier, _kdf = self.secrets()
        return x509.revocation_list(ca, self.store.revoked_serials(), now())

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
