"""A backup of the running control: one archive (``control/archive.py``)
with everything a fresh machine needs to be this control again.

* the cluster's state: a consistent snapshot of the store (SQLite's online
  backup, while the daemon goes on writing), the CA and every key and
  certificate under ``tls/``, the password verifier, control.yaml;
* the control plane's data: its MariaDB databases in one consistent dump
  (``mariadb-dump --single-transaction``: InnoDB's snapshot, no lock on the
  running services), RabbitMQ's definitions (``rabbitmqctl
  export_definitions``), Keystone's fernet and credential keys (the
  credential keys decrypt what Keystone stores encrypted), and Glance's
  image files unless left out.

The archive is made in a private directory under the state directory and
handed to the caller as a file to stream; the caller deletes it. On a full
disk nothing is left behind (``errors.DiskFull``).

No gRPC here: ``api/servicers/admin.py`` streams the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from microstackd import commands, errors, versions
from microstackd.config import DaemonConfig
from microstackd.control import archive
from microstackd.control.cluster import Cluster
from microstackd.control.node_accounts import ACCOUNTS_DIR
from microstackd.control.plane import ControlPlane
from microstackd.model import Role
from microstackd.node import steps
from microstackd.node.roles import CONTROL
from microstackd.node.roles.control import MARIADB_CNF
from microstackd.store.files import (
    BOOTSTRAP_CERT,
    BOOTSTRAP_KEY,
    CA_CERT,
    CA_KEY,
    CA_RETIRING_CERT,
    CA_RETIRING_KEY,
    NODE_CERT,
    NODE_KEY,
    VERIFIER,
    storage_error,
    write_private_file,
)

log = logging.getLogger(__name__)

#: The state files a control's archive carries (those present).
STATE_FILES = (
    CA_KEY, CA_CERT, CA_RETIRING_KEY, CA_RETIRING_CERT, NODE_KEY, NODE_CERT,
    BOOTSTRAP_KEY, BOOTSTRAP_CERT, VERIFIER,
)  # fmt: skip
#: The control plane's databases (databases.sql creates them).
DATABASES = ("keystone", "glance", "placement", "nova_api", "nova", "nova_cell0", "neutron")
MARIADB_DUMP = "/usr/bin/mariadb-dump"
#: Debian's rabbitmqctl itself (its /usr/sbin wrapper switches to user rabbitmq,
#: whose HOME holds no cookie of this node's RabbitMQ).
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
KEYSTONE_KEY_DIRS = ("fernet-keys", "credential-keys")
DUMP_TIMEOUT = 600.0

Progress = Callable[[str], Awaitable[None]]


def rabbitmq_env(values: dict[str, str]) -> dict[str, str]:
    """The environment rabbitmqctl needs to reach this control's RabbitMQ
    (its node name, cookie in HOME, epmd port): the service's own."""
    spec = steps.service_spec(CONTROL.service("rabbitmq"), values)
    return {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", **spec.env}


def proof_path(config: DaemonConfig) -> Path:
    """The root-only file whose content a backup request must carry."""
    return config.socket.with_suffix(".root-proof")


class Backups:
    """Backups are for root alone (docs/security.md): the archive holds the
    cluster CA's key, and the socket's group may not have it. The daemon
    keeps a random proof in a file only root can read, beside the socket
    (``proof_path``); a request without it is refused."""

    def __init__(self, config: DaemonConfig, cluster: Cluster, plane: ControlPlane) -> None:
        self._proof = b""
        self._config = config
        self._cluster = cluster
        self._store = cluster.store
        self._plane = plane
        self._lock = asyncio.Lock()

    def write_proof(self) -> None:
        """At start: a new proof, 0600, beside the socket."""
        self._proof = secrets.token_hex(32).encode()
        write_private_file(proof_path(self._config), self._proof, dir_mode=0o755)

    def remove_proof(self) -> None:
        with contextlib.suppress(OSError):
            proof_path(self._config).unlink()

    def check_proof(self, proof: bytes) -> None:
        if not self._proof or not hmac.compare_digest(proof, self._proof):
            raise errors.PermissionDenied(
                "only root may take a backup: the archive holds the cluster CA's private key "
                f"(the request must carry {proof_path(self._config)}, readable by root alone); "
                "run it as root (sudo microstackctl backup FILE)"
            )

    async def create(
        self, no_images: bool, progress: Progress, proof: bytes = b""
    ) -> tuple[Path, archive.Manifest]:
        """Make the archive; return its path (the caller streams, then
        deletes it with ``discard``) and its manifest."""
        self.check_proof(proof)
        member = self._store.cluster()
        if member is not None and member.role is not Role.CONTROL:
            raise errors.NotControl(
                f"backup runs on the control ({member.control_name} at {member.control_address}): "
                "it holds the cluster; a compute's own state is its key and certificate, and a "
                "lost compute comes back by joining again"
            )
        cluster = self._cluster.require()
        if self._lock.locked():
            raise errors.RestoreRefused("a backup is already being made on this control; wait")
        async with self._lock:
            work = self._workdir()
            try:
                parts = await self._collect(work, no_images, progress)
                me = self._store.node(self._config.node_name)
                header: dict[str, Any] = {
                    "id": secrets.token_hex(8),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                    "created_unix": time.time(),
                    "microstackd": versions.VERSION,
                    "api": versions.API_VERSION,
                    "schema": self._store.schema_version(),
                    "cluster": {
                        "id": cluster.cluster_id,
                        "control_name": cluster.control_name,
                        "control_address": cluster.control_address,
                        "bootstrap_port": cluster.bootstrap_port,
                        "cluster_port": cluster.cluster_port,
                        "ca_fingerprint": cluster.ca_fingerprint,
                        "hostname": me.hostname if me else "",
                        "members": sorted(n.name for n in self._store.nodes()),
                    },
                    "openstack": any(name == archive.MARIADB_DUMP for name, _p in parts),
                    "images": "left out" if no_images else "included",
                }
                await progress(f"writing the archive ({len(parts)} files)")
                path = work / "backup.tar"
                manifest = await asyncio.to_thread(self._write, path, header, parts)
                return path, manifest
            except BaseException:
                self.discard(work)
                raise

    def _workdir(self) -> Path:
        try:
            return Path(tempfile.mkdtemp(prefix=".backup-", dir=self._config.state_dir))
        except OSError as exc:
            raise storage_error(self._config.state_dir / ".backup-", exc) from exc

    @staticmethod
    def discard(path: Path) -> None:
        """Remove the archive's working directory (``path`` or its parent)."""
        work = path if path.is_dir() else path.parent
        if work.name.startswith(".backup-"):
            shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    def _write(
        path: Path, header: dict[str, Any], parts: list[tuple[str, Path]]
    ) -> archive.Manifest:
        try:
            with path.open("xb") as f:
                path.chmod(0o600)
                manifest = archive.write(f, header, parts)
                f.flush()
            return manifest
        except OSError as exc:
            raise storage_error(path, exc) from exc

    async def _collect(
        self, work: Path, no_images: bool, progress: Progress
    ) -> list[tuple[str, Path]]:
        parts: list[tuple[str, Path]] = []
        await progress("a snapshot of the cluster's state (SQLite online backup)")
        db = work / "microstackd.db"
        await asyncio.to_thread(self._store.backup_to, db)
        parts.append((archive.DATABASE, db))
        for name in STATE_FILES:
            if (self._config.state_dir / name).exists():
                parts.append((f"state/{name}", self._config.state_dir / name))
        # Each compute's own OpenStack passwords: the restored RabbitMQ and
        # Keystone hold their hashes, the control must hold them to reissue.
        accounts = self._config.state_dir / ACCOUNTS_DIR
        if accounts.is_dir():
            for path in sorted(accounts.glob("*.json")):
                parts.append((f"state/{ACCOUNTS_DIR}/{path.name}", path))
        parts.append((archive.CONTROL_YAML, self._config.control_config_path))
        values = self._plane.settings()
        if values is None or not self._plane.started("mariadb"):
            return parts
        await progress("the OpenStack databases (mariadb-dump --single-transaction)")
        dump = work / "databases.sql"
        await self._run(
            "mariadb-dump",
            (MARIADB_DUMP, f"--defaults-file={values['config_root']}/{MARIADB_CNF}",
             "--single-transaction", "--quick", "--routines", "--triggers",
             "--databases", *DATABASES),
            dump,
        )  # fmt: skip
        parts.append((archive.MARIADB_DUMP, dump))
        if self._plane.started("rabbitmq"):
            await progress("RabbitMQ's definitions (rabbitmqctl export_definitions)")
            definitions = work / "rabbitmq-definitions.json"
            await self._run(
                "rabbitmqctl export_definitions",
                (RABBITMQCTL, "export_definitions", str(definitions)),
                None,
                rabbitmq_env(values),
            )
            parts.append((archive.RABBITMQ_DEFINITIONS, definitions))
        state_path = Path(values["state_path"])
        for sub in KEYSTONE_KEY_DIRS:
            parts += _files(state_path / "keystone" / sub, f"{archive.KEYSTONE_KEYS}/{sub}")
        if not no_images:
            images = _files(state_path / "glance" / "images", archive.GLANCE_IMAGES)
            await progress(f"Glance's images ({len(images)} file(s))")
            parts += images
        return parts

    async def _run(
        self,
        what: str,
        argv: tuple[str, ...],
        stdout: Path | None,
        env: dict[str, str] | None = None,
    ) -> None:
        out = None
        try:
            out = stdout.open("xb") if stdout is not None else None
            if stdout is not None:
                stdout.chmod(0o600)
            done = await commands.run(
                argv,
                timeout=DUMP_TIMEOUT,
                stdout=out if out is not None else commands.PIPE,
                stderr=commands.PIPE,
                env=env,
            )
        except OSError as exc:
            raise storage_error(stdout or Path(argv[0]), exc) from exc
        except TimeoutError:
            raise errors.ServiceFailed(
                f"backup: {what} did not finish within {DUMP_TIMEOUT:g} s"
            ) from None
        finally:
            if out is not None:
                out.close()
        if done.returncode != 0:
            text = done.stderr.strip()
            if "No space left" in text or "Errcode: 28" in text:
                raise errors.DiskFull(
                    f"cannot write the backup under {self._config.state_dir}: the disk is full; "
                    "nothing was kept"
                )
            raise errors.ServiceFailed(
                f"backup: {what} exited with status {done.returncode}: {text[-600:]}"
            )


def _files(directory: Path, prefix: str) -> list[tuple[str, Path]]:
    """Every regular file under ``directory``, named ``prefix/RELATIVE``."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.rglob("*")):
        if path.is_file() and not path.is_symlink():
            found.append((f"{prefix}/{path.relative_to(directory).as_posix()}", path))
    return found
