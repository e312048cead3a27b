"""Restore a control from its backup on a fresh machine (same address).

Rules:

1. Nothing is written before the archive proved whole and fit for this
   node: every member against its checksum (``control/archive.py``), the
   format and the versions (an archive of a newer microstackd or store
   schema is refused), this node in no cluster, its node name, address and
   ports the archive's. A refusal says what to do and changes nothing.
2. The commit point is the store: the files go into place first (keys,
   verifier, control.yaml, Keystone's keys, Glance's images), then the
   snapshot of the store replaces the empty one in one step. From then on
   this node is the control of the restored cluster: it serves its mTLS
   port with the same CA and certificate, so the computes, which pin the
   control's address, name and CA, reconnect by themselves.
3. The control plane is then brought up by the control role's own steps,
   run again from the first (each is idempotent): MariaDB on a fresh data
   directory is loaded from the dump before the databases step, RabbitMQ
   gets its definitions back, the db syncs find their schemas done. The
   steps that make what the restored databases already hold are not run
   (Keystone's bootstrap, the identity step, Nova's cells, the cloud's
   defaults, the test image): they would undo what the operator changed
   since (the bootstrap resets the admin's password). A restore
   interrupted there is resumed by
   running it again with the same archive.
4. What changed after the backup is not in it. A member whose certificate
   was renewed after the backup presents a serial the restored store does
   not know: it is accepted once, when its certificate names that member
   and role and was issued after the backup (only this CA's holder can
   have issued it), and becomes the member's certificate
   (``member.callers``). A node that joined after the backup is refused
   and must join again; one removed after it must be removed again.

No gRPC here: ``api/servicers/admin.py`` receives the archive and streams
the restore's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

from microstackd import commands, errors, versions
from microstackd.config import DaemonConfig, Ports
from microstackd.control import archive
from microstackd.control.backup import RABBITMQCTL, rabbitmq_env
from microstackd.control.cluster import Cluster
from microstackd.control.plane import ControlPlane
from microstackd.enrolment.events import Signal
from microstackd.enrolment.runner import Runner, Skipped, StepAction, StepContext
from microstackd.model import BootstrapCertificate, NodeState, NodeUpdate, Role
from microstackd.node.roles import CONTROL
from microstackd.node.roles.control import MARIADB_CNF
from microstackd.node.roles.parts import service_step
from microstackd.store import RESTORED_BACKUP_TIME
from microstackd.store.files import (
    BOOTSTRAP_CERT,
    storage_error,
    sync_directory,
    write_private_files,
)
from microstackd.trust import x509

log = logging.getLogger(__name__)

RESTORE_DATABASES = "restore-databases"
RESTORE_RABBITMQ = "restore-rabbitmq"
DONE = "done"
#: The control role's steps a restore does not run again (rule 3): they
#: create what the restored databases hold (users, endpoints, cells, the
#: cloud's defaults, the test image) and would undo what the operator
#: changed since (keystone-manage bootstrap resets the admin's password).
NOT_AGAIN = ("keystone-bootstrap", "identity", "nova-cells", "cloud-defaults", "test-image")
#: Where the dump and the definitions wait for their steps (0700).
PENDING_DIR = "restore"
#: store meta: the backup restored, and when it was made (``member.callers``).
META_BACKUP = "restored_backup"
META_BACKUP_TIME = RESTORED_BACKUP_TIME
MARIADB = "/usr/bin/mariadb"
LOAD_TIMEOUT = 900.0


def plan() -> tuple[str, ...]:
    """The restore's steps: the control role's, with the two loads, then done."""
    order: list[str] = []
    for step in CONTROL.order:
        if step in NOT_AGAIN:
            continue
        order.append(step)
        if step == service_step("mariadb"):
            order.append(RESTORE_DATABASES)
        elif step == service_step("rabbitmq"):
            order.append(RESTORE_RABBITMQ)
    return (*order, DONE)


TITLES = {
    RESTORE_DATABASES: "loading the OpenStack databases from the backup",
    RESTORE_RABBITMQ: "importing RabbitMQ's definitions from the backup",
}


class Restores:
    def __init__(
        self,
        config: DaemonConfig,
        cluster: Cluster,
        runner: Runner,
        plane: ControlPlane,
        ports: Ports,
        joined: Signal,
        bootstrap: BootstrapCertificate,
        bootstrap_renewed: Signal,
    ) -> None:
        #: The bootstrap port's certificate as served: the archive's from the
        #: restore on (join tokens made before the backup name it).
        self._bootstrap = bootstrap
        self._bootstrap_renewed = bootstrap_renewed
        self._config = config
        self._cluster = cluster
        self._store = cluster.store
        self._runner = runner
        self._plane = plane
        self._ports = ports
        self._joined = joined

    # ------------------------------------------------------ refusals --

    def refuse_over_a_cluster(self) -> None:
        """Refuse at once (before the archive is sent) over a cluster that
        is not a restore of this node's to resume."""
        cluster = self._store.cluster()
        if cluster is None or (
            self._store.get_meta(META_BACKUP) is not None and self._unfinished()
        ):
            return
        role = "the control" if cluster.role is Role.CONTROL else "a compute"
        raise errors.RestoreRefused(
            f"this node is already {role} node of cluster {cluster.cluster_id} (control "
            f"{cluster.control_name} at {cluster.control_address}): a backup is restored only on "
            "a node in no cluster, and nothing was changed. To restore here anyway, stop "
            f"microstackd, move {self._config.state_dir} away, start it again and run restore"
        )

    def _unfinished(self) -> bool:
        me = self._store.node(self._config.node_name)
        return me is not None and me.state is not NodeState.ACTIVE

    def workdir(self) -> Path:
        """A private directory for the archive as it arrives (removed by ``discard``)."""
        try:
            return Path(tempfile.mkdtemp(prefix=".restore-", dir=self._config.state_dir))
        except OSError as exc:
            raise storage_error(self._config.state_dir / ".restore-", exc) from exc

    @staticmethod
    def discard(work: Path) -> None:
        if work.name.startswith(".restore-"):
            shutil.rmtree(work, ignore_errors=True)

    def _check(self, manifest: archive.Manifest) -> None:
        """Rule 1, on the manifest: versions, name, address, ports, OpenStack."""
        data, cluster = manifest.data, manifest.cluster
        if data.get("format_version") != archive.FORMAT_VERSION:
            raise errors.RestoreRefused(
                f"the archive is of format version {data.get('format_version')}, this "
                f"microstackd ({versions.VERSION}) reads version {archive.FORMAT_VERSION}: "
                "restore it with the microstackd that made it"
            )
        made_by = str(data.get("microstackd", ""))
        theirs, ours = versions.release(made_by), versions.release(versions.VERSION)
        if theirs is None or ours is None or theirs > ours:
            raise errors.RestoreRefused(
                f"the archive was made by microstackd {made_by}, newer than this one "
                f"({versions.VERSION}): install microstackd {made_by} (or newer) here first"
            )
        if int(data.get("schema", 0)) > self._store.schema_version():
            raise errors.RestoreRefused(
                f"the archive's store schema ({data.get('schema')}) is newer than this "
                f"microstackd's ({self._store.schema_version()}): install microstackd "
                f"{made_by} (or newer) here first"
            )
        name = str(cluster["control_name"])
        if name != self._config.node_name:
            raise errors.RestoreRefused(
                f"the archive is of control {name!r}, this node is {self._config.node_name!r}: "
                f"start microstackd with --node-name {name} (every member knows its control "
                "by that name)"
            )
        address = str(cluster["control_address"])
        listen = self._config.listen_host
        if not _is_local(address) or listen not in ("0.0.0.0", "::", "", address):
            raise errors.RestoreRefused(
                f"the archive's control address {address} is not an address of this machine, or "
                f"not the one this microstackd listens on ({listen}). "
                "Every member pins the control's address (its certificate carries it, and so "
                "do the computes' configuration and Keystone's endpoints), so a restore goes "
                f"only to a machine with that address: give this machine {address} (e.g. `ip "
                f"addr add {address}/PREFIX dev IFACE`), start microstackd with --listen "
                f"{address}:PORT (or 0.0.0.0:PORT) and run restore again. Moving a cluster "
                "to another address is not supported: see docs/backup.md"
            )
        wanted = (int(cluster["bootstrap_port"]), int(cluster["cluster_port"]))
        if wanted != (self._ports.bootstrap, self._ports.cluster):
            raise errors.RestoreRefused(
                f"the archive's control listens on ports {wanted[0]} (bootstrap) and "
                f"{wanted[1]} (cluster), this microstackd on {self._ports.bootstrap} and "
                f"{self._ports.cluster}: start it with --listen {address}:{wanted[0]} "
                f"--cluster-port {wanted[1]} (the members dial those)"
            )
        if data.get("openstack") and not self._plane.enabled:
            raise errors.RestoreRefused(
                "the archive holds a control plane (its OpenStack databases), and this "
                "microstackd has no OpenStack environment: start it with --openstack-prefix"
            )

    # -------------------------------------------------------- restore --

    async def start(self, path: Path, work: Path) -> int:
        """Check the archive at ``path`` (rule 1), put its state in place
        (rule 2), start the plane's steps (rule 3); the seq to follow from."""
        self.refuse_over_a_cluster()
        staging = work / "x"
        # Off the event loop (an archive with images may be gigabytes); what
        # follows, from the checks to the commit, runs without an await.
        manifest = await asyncio.to_thread(archive.read, path, staging)
        self.refuse_over_a_cluster()
        self._check(manifest)
        name = self._config.node_name
        if self._store.cluster() is not None:
            if self._store.get_meta(META_BACKUP) != manifest.data.get("id"):
                raise errors.RestoreRefused(
                    "this node holds an unfinished restore of another backup: run restore with "
                    "that archive, or stop microstackd, move its state directory away and start "
                    "again"
                )
        else:
            self._commit(manifest, staging)
            self._cluster.reload_secrets()
            await self._serve_restored_bootstrap()
            await self._joined.emit()
        if self._runner.running(name):
            raise errors.RestoreRefused("a restore (or init) is already running on this node")
        after = self._store.last_seq(name)
        actions: dict[str, StepAction] = dict(
            self._plane.actions(self._cluster.load_control_config)
        )
        actions[RESTORE_DATABASES] = self._load_databases
        actions[RESTORE_RABBITMQ] = self._import_definitions
        actions[DONE] = lambda ctx: self._done(ctx, manifest)
        titles = {**self._plane.titles(), **TITLES}
        self._runner.ensure_running(name, plan(), actions, titles)
        return after

    def _commit(self, manifest: archive.Manifest, staging: Path) -> None:
        state = self._config.state_dir
        files: list[tuple[Path, bytes, int]] = []
        moves: list[tuple[Path, Path]] = []
        for member in manifest.members:
            source = staging / member.name
            if member.name == archive.DATABASE:
                continue
            if member.name == archive.CONTROL_YAML:
                files.append((self._config.control_config_path, source.read_bytes(), 0o600))
            elif member.name.startswith("state/"):
                target = state / member.name.removeprefix("state/")
                files.append((target, source.read_bytes(), 0o600))
            elif member.name in (archive.MARIADB_DUMP, archive.RABBITMQ_DEFINITIONS):
                moves.append((source, state / PENDING_DIR / Path(member.name).name))
            else:  # openstack/keystone/..., openstack/glance/images/... (images may be big)
                moves.append((source, state / "services" / member.name.removeprefix("openstack/")))
        write_private_files(files)
        _move_into_place(moves)
        self._store.restore_from(staging / archive.DATABASE)
        name = self._config.node_name
        self._store.forget_steps(name)
        self._store.set_meta(
            {
                META_BACKUP: str(manifest.data["id"]),
                META_BACKUP_TIME: repr(float(manifest.data["created_unix"])),
            }
        )
        self._store.record_all(
            [],
            [NodeUpdate(name, NodeState.ENROLLING, f"restoring from backup {manifest.data['id']}")],
        )
        log.info(
            "backup restored backup=%s made=%s cluster=%s",
            manifest.data["id"], manifest.data["created"], manifest.cluster["id"],
        )  # fmt: skip

    async def _serve_restored_bootstrap(self) -> None:
        cert_pem = self._store.read_file(BOOTSTRAP_CERT)
        if cert_pem is None:
            return
        cert = x509.load_cert(cert_pem)
        self._bootstrap.fingerprint = x509.fingerprint(cert_pem)
        self._bootstrap.not_after = cert.not_valid_after_utc.timestamp()
        await self._bootstrap_renewed.emit()

    # ---------------------------------------------------------- steps --

    def _pending(self, name: str) -> Path:
        return self._config.state_dir / PENDING_DIR / name

    async def _load_databases(self, ctx: StepContext) -> str | Skipped:
        dump = self._pending(Path(archive.MARIADB_DUMP).name)
        values = self._plane.settings()
        if values is None or not dump.exists():
            return Skipped("no OpenStack databases in this backup")
        await ctx.progress(f"mariadb < {dump.name} ({dump.stat().st_size // 1024} KiB)")
        argv = (MARIADB, f"--defaults-file={values['config_root']}/{MARIADB_CNF}")
        await _run(RESTORE_DATABASES, argv, dump.read_bytes(), None)
        return f"loaded {dump.name} into MariaDB"

    async def _import_definitions(self, ctx: StepContext) -> str | Skipped:
        definitions = self._pending(Path(archive.RABBITMQ_DEFINITIONS).name)
        values = self._plane.settings()
        if values is None or not definitions.exists():
            return Skipped("no RabbitMQ definitions in this backup")
        argv = (RABBITMQCTL, "import_definitions", str(definitions))
        await _run(RESTORE_RABBITMQ, argv, None, rabbitmq_env(values))
        return "RabbitMQ's users, vhosts, queues and policies imported"

    async def _done(self, ctx: StepContext, manifest: archive.Manifest) -> str:
        with contextlib.suppress(OSError):
            shutil.rmtree(self._config.state_dir / PENDING_DIR)
        computes = [m for m in manifest.cluster.get("members", []) if m != ctx.node]
        images = "" if manifest.data.get("images") != "left out" else (
            "; Glance's images were left out of this backup: upload them again"
        )  # fmt: skip
        return (
            f"{ctx.node} restored from backup {manifest.data['id']} of {manifest.data['created']}; "
            f"its {len(computes)} compute(s) reconnect by themselves (`microstackctl status`)"
            f"{images}"
        )


async def _run(
    step: str, argv: tuple[str, ...], stdin: bytes | None, env: dict[str, str] | None
) -> None:
    try:
        done = await commands.run(argv, timeout=LOAD_TIMEOUT, input=stdin, env=env)
    except OSError as exc:
        raise errors.ServiceFailed(f"{step}: cannot run {argv[0]}: {exc.strerror or exc}") from exc
    except TimeoutError:
        raise errors.ServiceFailed(f"{step}: did not finish within {LOAD_TIMEOUT:g} s") from None
    if done.returncode != 0:
        text = (done.stderr + done.stdout).strip()
        raise errors.ServiceFailed(f"{step}: {argv[0]} exited {done.returncode}: {text[-600:]}")


def _move_into_place(moves: list[tuple[Path, Path]]) -> None:
    """Rename each checked file from the staging directory (on the state
    directory's filesystem) to its place: no copy, however big an image is."""
    directories: dict[Path, Path] = {}
    for source, target in moves:
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(source, target)
        except OSError as exc:
            raise storage_error(target, exc) from exc
        directories[target.parent] = target
    for target in directories.values():
        sync_directory(target)


def _is_local(address: str) -> bool:
    """Whether ``address`` is one of this machine's (it can be bound here)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.bind((address, 0))
    except OSError:
        return False
    finally:
        probe.close()
    return True
