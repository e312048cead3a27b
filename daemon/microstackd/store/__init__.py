"""Durable state: one SQLite database and a few key files under the state dir.

Rules:

1. Every write is committed (WAL, ``synchronous=FULL``) before the caller
   reports it to anyone: an event a client has seen is on disk.
2. Key and certificate files are written atomically (temporary file, fsync,
   rename, fsync of the directory) with mode 0600, so a crash leaves either
   the old file or the new one, never half of one. Files written together
   make their fsyncs together (``write_private_files``).
3. The schema changes only through ``MIGRATIONS`` (``store/schema.py``),
   applied in order and recorded in ``PRAGMA user_version``.

No gRPC here; errors are ``microstackd.errors`` classes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from microstackd import errors
from microstackd.model import (
    ClusterRecord,
    EventRecord,
    NodeCredentials,
    NodeRecord,
    NodeState,
    NodeUpdate,
    Role,
    ServiceRecord,
    Software,
    StepState,
    TokenRecord,
)
from microstackd.store.files import (
    CA_CERT,
    NODE_CERT,
    NODE_KEY,
    cluster_files,
    lost_database,
    storage_error,
    write_private_file,
    write_private_files,
)
from microstackd.store.schema import MIGRATIONS

DB_NAME = "microstackd.db"
#: meta: when the backup this control was restored from was made (time.time()).
RESTORED_BACKUP_TIME = "restored_backup_time"


class Store:
    """The node's database. One instance per daemon, used from one thread."""

    def __init__(self, state_dir: Path, node_name: str = "") -> None:
        """``node_name`` is only for the messages of a refusal to start."""
        self.state_dir = state_dir
        self.path = path = state_dir / DB_NAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            missing = not path.exists()
            empty = missing or path.stat().st_size == 0
        except OSError as exc:
            raise storage_error(path, exc) from exc
        found = cluster_files(state_dir)
        if empty and found:
            # Checked before SQLite creates a fresh database here, which
            # would make the next start look like a new node's.
            raise lost_database(
                state_dir, path, found, "missing" if missing else "empty", node_name
            )
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._nodes_cache: tuple[tuple[int, int], list[NodeRecord]] | None = None
            os.chmod(path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if type(exc) is not sqlite3.DatabaseError:  # OperationalError & co: not the file
                raise storage_error(path, exc) from exc
            raise errors.StorageError(
                f"the database {path} is damaged ({exc}): restore it from a backup "
                "(with microstackd stopped); keep the keys under tls/ and verifier.json"
            ) from exc
        except (OSError, sqlite3.Error) as exc:
            raise storage_error(path, exc) from exc

    def close(self) -> None:
        """Fold the WAL into the database file, then close."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            with self.transaction():
                for statement in filter(str.strip, script.split(";")):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic, durable unit of work: committed whole, or not at all
        (also when the COMMIT itself fails, as it does on a full disk)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc):
                raise errors.DiskFull(
                    f"cannot write {self.path}: the disk is full; nothing was changed"
                ) from exc
            raise

    def free_bytes(self) -> int:
        """Space left for this node's state (0 when it cannot be told)."""
        try:
            found = os.statvfs(self.state_dir)
        except OSError:
            return 0
        return found.f_bavail * found.f_frsize

    # ---------------------------------------------- backup and restore --

    def schema_version(self) -> int:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        return int(version)

    def backup_to(self, path: Path) -> None:
        """A consistent copy of the database at ``path`` (SQLite's online
        backup: committed state only, while the daemon goes on writing)."""
        try:
            target = sqlite3.connect(path)
        except sqlite3.Error as exc:
            raise storage_error(path, exc) from exc
        try:
            os.chmod(path, 0o600)
            self._db.backup(target)
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):
                raise errors.DiskFull(
                    f"cannot write {path}: the disk is full; nothing was changed"
                ) from exc
            raise storage_error(path, exc) from exc
        except (OSError, sqlite3.Error) as exc:
            raise storage_error(path, exc) from exc
        finally:
            target.close()

    def restore_from(self, path: Path) -> None:
        """Replace the whole database with the one at ``path`` (a backup's),
        in one step through SQLite's backup API, then bring its schema up to
        this build's (``MIGRATIONS``)."""
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            source.backup(self._db)
        except sqlite3.Error as exc:
            raise storage_error(self.path, exc) from exc
        finally:
            source.close()
        self._migrate()

    def forget_steps(self, node: str) -> None:
        """``node``'s recorded steps are to be run again (its events stay)."""
        with self.transaction() as db:
            db.execute("DELETE FROM steps WHERE node = ?", (node,))

    # ------------------------------------------------------------ meta --

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, values: dict[str, str]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                values.items(),
            )

    def cluster(self) -> ClusterRecord | None:
        """The cluster this node belongs to, once its membership is complete."""
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if "cluster_id" not in rows:
            return None
        return ClusterRecord(
            cluster_id=rows["cluster_id"],
            role=Role(rows["role"]),
            control_name=rows["control_name"],
            control_address=rows["control_address"],
            bootstrap_port=int(rows["bootstrap_port"]),
            cluster_port=int(rows["cluster_port"]),
            ca_fingerprint=rows["ca_fingerprint"],
            ca_not_after=float(rows["ca_not_after"]),
        )

    def set_cluster(self, cluster: ClusterRecord) -> None:
        self.set_meta(
            {
                "cluster_id": cluster.cluster_id,
                "role": cluster.role.value,
                "control_name": cluster.control_name,
                "control_address": cluster.control_address,
                "bootstrap_port": str(cluster.bootstrap_port),
                "cluster_port": str(cluster.cluster_port),
                "ca_fingerprint": cluster.ca_fingerprint,
                "ca_not_after": repr(cluster.ca_not_after),
            }
        )

    # ----------------------------------------------------------- nodes --

    _NODE_COLUMNS = (
        "name, role, address, hostname, state, message, cert_serial, cert_not_after, "
        "joined, last_seen, agent_port, pending_serial, version, api_version"
    )

    def _node(
        self, row: tuple[object, ...], services: tuple[ServiceRecord, ...] | None = None
    ) -> NodeRecord:
        name = str(row[0])
        if services is None:
            services = tuple(self.services(name))
        return NodeRecord(
            name=name,
            role=Role(str(row[1])),
            address=str(row[2]),
            hostname=str(row[3]),
            state=NodeState(str(row[4])),
            message=str(row[5]),
            cert_serial=str(row[6]),
            cert_not_after=float(row[7]),  # type: ignore[arg-type]
            joined=float(row[8]),  # type: ignore[arg-type]
            last_seen=float(row[9]),  # type: ignore[arg-type]
            agent_port=int(row[10]),  # type: ignore[call-overload]
            services=services,
            pending_serial=str(row[11]),
            version=str(row[12]),
            api_version=str(row[13]),
        )

    def identity_candidates(self, name: str, keys: set[str], address: str) -> list[NodeRecord]:
        """The nodes other than ``name``, not removed, that could share an
        identity with a joiner: a name or hostname whose DNS key (lower case,
        no trailing dot) is in ``keys``, the same IPv4 address text, or any
        IPv6 address when ``address`` is one (its text has several forms).
        One query however many nodes there are; the caller compares exactly."""
        marks = ", ".join("?" * len(keys))
        ipv6 = 1 if ":" in address else 0
        rows = self._db.execute(
            f"SELECT {self._NODE_COLUMNS} FROM nodes WHERE name != ? AND state != ? AND ("
            f"rtrim(lower(name), '.') IN ({marks}) OR rtrim(lower(hostname), '.') IN ({marks}) "
            "OR address = ? OR (? AND instr(address, ':') > 0))",
            (name, NodeState.REMOVED.value, *keys, *keys, address, ipv6),
        ).fetchall()
        return [self._node(row) for row in rows]

    def _nodes_version(self) -> tuple[int, int]:
        (data_version,) = self._db.execute("PRAGMA data_version").fetchone()
        return self._db.total_changes, int(data_version)

    def node(self, name: str) -> NodeRecord | None:
        row = self._db.execute(
            f"SELECT {self._NODE_COLUMNS} FROM nodes WHERE name = ?", (name,)
        ).fetchone()
        return None if row is None else self._node(row)

    def nodes(self) -> list[NodeRecord]:
        """Every node, the control first.

        Read with two queries however many nodes there are, and kept until
        the database changes: ``total_changes`` counts every row this
        connection wrote, ``data_version`` moves when another connection
        commits. Status at 10,000 nodes re-read and rebuilt every record
        per call (~100 ms here); unchanged, it is a list copy. The records
        are frozen, so sharing them is safe."""
        version = self._nodes_version()
        if self._nodes_cache is not None and self._nodes_cache[0] == version:
            return list(self._nodes_cache[1])
        rows = self._db.execute(
            f"SELECT {self._NODE_COLUMNS} FROM nodes ORDER BY role = 'control' DESC, joined, name"
        ).fetchall()
        services: dict[str, list[ServiceRecord]] = {}
        for node, n, s, m, d in self._db.execute(
            "SELECT node, name, state, message, detail FROM services ORDER BY node, name"
        ):
            services.setdefault(str(node), []).append(ServiceRecord(str(n), str(s), str(m), str(d)))
        nodes = [self._node(row, tuple(services.get(str(row[0]), ()))) for row in rows]
        self._nodes_cache = (version, nodes)
        return list(nodes)

    def put_node(self, node: NodeRecord, *, replaces_serial: str | None = None) -> None:
        """Insert or replace a node; a replaced certificate serial is revoked,
        and the events of the membership it ends are deleted: numbering goes
        on after them, so a follower that saw one never takes a new event for
        it."""
        with self.transaction() as db:
            self._put_node(db, node, replaces_serial)

    def set_certificate(self, name: str, serial: str, not_after: float) -> None:
        """Record the certificate a node now holds (its key unchanged)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE nodes SET cert_serial = ?, cert_not_after = ? WHERE name = ?",
                (serial, not_after, name),
            )

    def _put_node(
        self, db: sqlite3.Connection, node: NodeRecord, replaces_serial: str | None
    ) -> None:
        """``put_node`` within ``db``'s transaction (``record_all`` too)."""
        if replaces_serial:
            events_from = self._last_seq(db, node.name)
            self._revoke_pending(db, node.name, node.joined)  # a renewal it never used
        else:
            row = db.execute(
                "SELECT events_from FROM nodes WHERE name = ?", (node.name,)
            ).fetchone()
            events_from = int(row[0]) if row else 0
        db.execute(
            f"INSERT OR REPLACE INTO nodes ({self._NODE_COLUMNS}, events_from) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                node.name,
                node.role.value,
                node.address,
                node.hostname,
                node.state.value,
                node.message,
                node.cert_serial,
                node.cert_not_after,
                node.joined,
                node.last_seen,
                node.agent_port,
                node.pending_serial,
                node.version,
                node.api_version,
                events_from,
            ),
        )
        if replaces_serial:
            self._revoke(db, replaces_serial, node.name, node.joined)
            db.execute("DELETE FROM steps WHERE node = ?", (node.name,))
            db.execute("DELETE FROM events WHERE node = ?", (node.name,))

    def replace_certificate(self, name: str, serial: str, not_after: float, when: float) -> None:
        """The node holds a new certificate now (a renewal the node made
        itself: the control's own): the old serial is revoked at once."""
        with self.transaction() as db:
            row = db.execute("SELECT cert_serial FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise errors.NotFound(f"no node named {name!r}")
            self._revoke(db, str(row[0]), name, when)
            db.execute(
                "UPDATE nodes SET cert_serial = ?, cert_not_after = ? WHERE name = ?",
                (serial, not_after, name),
            )

    def set_pending_certificate(
        self, name: str, serial: str, not_after: float, when: float
    ) -> None:
        """A renewed certificate issued to the node, not used yet: the old one
        stays the node's until ``promote_certificate``. A pending one it
        replaces was never used, and is revoked."""
        with self.transaction() as db:
            row = db.execute("SELECT pending_serial FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise errors.NotFound(f"no node named {name!r}")
            if row[0]:
                self._revoke(db, str(row[0]), name, when)
            db.execute(
                "UPDATE nodes SET pending_serial = ?, pending_not_after = ? WHERE name = ?",
                (serial, not_after, name),
            )

    def promote_certificate(self, name: str, serial: str, when: float) -> bool:
        """The node used its pending certificate ``serial``: it becomes the
        node's, and the one it replaces is revoked. False when ``serial`` is
        not (or no longer) the node's pending one."""
        with self.transaction() as db:
            row = db.execute(
                "SELECT cert_serial, pending_not_after FROM nodes "
                "WHERE name = ? AND pending_serial = ? AND pending_serial != ''",
                (name, serial),
            ).fetchone()
            if row is None:
                return False
            self._revoke(db, str(row[0]), name, when)
            db.execute(
                "UPDATE nodes SET cert_serial = ?, cert_not_after = ?, pending_serial = '', "
                "pending_not_after = 0 WHERE name = ?",
                (serial, float(row[1]), name),
            )
        return True

    @staticmethod
    def _revoke(db: sqlite3.Connection, serial: str, node: str, when: float) -> None:
        db.execute(
            "INSERT OR IGNORE INTO revoked (serial, node, time) VALUES (?, ?, ?)",
            (serial, node, when),
        )

    @staticmethod
    def _revoke_pending(db: sqlite3.Connection, node: str, when: float) -> None:
        """Revoke the node's renewed certificate that it never used, if any."""
        db.execute(
            "INSERT OR IGNORE INTO revoked (serial, node, time) SELECT pending_serial, name, ? "
            "FROM nodes WHERE name = ? AND pending_serial != ''",
            (when, node),
        )

    def set_software(self, name: str, software: Software) -> None:
        """Record the version a node declared (at its bootstrap, in each heartbeat)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE nodes SET version = ?, api_version = ? WHERE name = ?",
                (software.version, software.api, name),
            )

    def touch_nodes(self, seen: Mapping[str, float]) -> None:
        """When each of these nodes was last heard from, in one commit (never
        moving a time back). Keeps the nodes cache valid rather than
        re-reading every node: heartbeats arrive all the time."""
        version = self._nodes_version()
        fresh = self._nodes_cache is not None and self._nodes_cache[0] == version
        with self.transaction() as db:
            db.executemany(
                "UPDATE nodes SET last_seen = max(last_seen, ?) WHERE name = ?",
                [(when, name) for name, when in seen.items()],
            )
        if fresh and self._nodes_cache is not None:
            self._nodes_cache = (
                self._nodes_version(),
                [
                    dataclasses.replace(n, last_seen=seen[n.name])
                    if seen.get(n.name, 0.0) > n.last_seen
                    else n
                    for n in self._nodes_cache[1]
                ],
            )

    def services(self, node: str) -> list[ServiceRecord]:
        """A node's services as last recorded, by name."""
        return [
            ServiceRecord(str(n), str(s), str(m), str(d))
            for n, s, m, d in self._db.execute(
                "SELECT name, state, message, detail FROM services WHERE node = ? ORDER BY name",
                (node,),
            )
        ]

    def set_services(self, node: str, services: list[ServiceRecord]) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM services WHERE node = ?", (node,))
            db.executemany(
                "INSERT INTO services (node, name, state, message, detail) VALUES (?, ?, ?, ?, ?)",
                [(node, s.name, s.state, s.message, s.detail) for s in services],
            )

    def revoked_serials(self) -> list[str]:
        """Every revoked certificate serial (hex), for the CRL."""
        return [
            str(row[0]) for row in self._db.execute("SELECT serial FROM revoked ORDER BY serial")
        ]

    def is_revoked(self, serial: str) -> bool:
        return (
            self._db.execute("SELECT 1 FROM revoked WHERE serial = ?", (serial,)).fetchone()
            is not None
        )

    # ----------------------------------------------------------- tokens --

    def put_token(self, token: TokenRecord, verifier: bytes) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO tokens (id, name, verifier, created, expires, state) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (token.id, token.name, verifier, token.created, token.expires, token.state),
            )

    def tokens(self) -> list[TokenRecord]:
        return [
            TokenRecord(str(i), str(n), float(c), float(e), str(s))
            for i, n, c, e, s in self._db.execute(
                "SELECT id, name, created, expires, state FROM tokens ORDER BY created DESC"
            )
        ]

    def token(self, token_id: str) -> tuple[TokenRecord, bytes] | None:
        row = self._db.execute(
            "SELECT id, name, created, expires, state, verifier FROM tokens WHERE id = ?",
            (token_id,),
        ).fetchone()
        if row is None:
            return None
        return TokenRecord(
            str(row[0]), str(row[1]), float(row[2]), float(row[3]), str(row[4])
        ), bytes(row[5])

    def set_token_state(self, token_id: str, state: str, *, expect: str | None = None) -> bool:
        """Change a token's state; with ``expect``, only from that state (atomic)."""
        with self.transaction() as db:
            if expect is None:
                cursor = db.execute("UPDATE tokens SET state = ? WHERE id = ?", (state, token_id))
            else:
                cursor = db.execute(
                    "UPDATE tokens SET state = ? WHERE id = ? AND state = ?",
                    (state, token_id, expect),
                )
        return cursor.rowcount == 1

    def remove_node(self, name: str, serial: str, when: float) -> None:
        """Mark a node removed and revoke its certificate, in one transaction."""
        with self.transaction() as db:
            db.execute(
                "UPDATE nodes SET state = ?, message = ? WHERE name = ?",
                (NodeState.REMOVED.value, "removed", name),
            )
            self._revoke(db, serial, name, when)
            self._revoke_pending(db, name, when)
            db.execute("DELETE FROM steps WHERE node = ?", (name,))
            db.execute("DELETE FROM services WHERE node = ?", (name,))

    def forget_cluster(self) -> None:
        """A member that was removed forgets its cluster (keys are deleted by the caller)."""
        with self.transaction() as db:
            db.execute("DELETE FROM meta")
            db.execute("DELETE FROM steps")
            db.execute("DELETE FROM events")

    def delete_file(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / name).unlink()

    # ---------------------------------------------------- steps, events --

    def step_states(self, node: str) -> dict[str, StepState]:
        return {
            str(step): StepState(str(state))
            for step, state in self._db.execute(
                "SELECT step, state FROM steps WHERE node = ?", (node,)
            )
        }

    def record_all(
        self,
        events: Sequence[EventRecord],
        updates: Sequence[NodeUpdate] = (),
        nodes: Sequence[tuple[NodeRecord, str | None]] = (),
    ) -> list[EventRecord]:
        """Persist new node records (each with the serial it replaces, as
        ``put_node``), step changes, their events and changes to node records
        in one transaction: one durable commit however many there are.
        Returns the events with their sequence numbers, in order."""
        recorded: list[EventRecord] = []
        with self.transaction() as db:
            for node, replaces_serial in nodes:
                self._put_node(db, node, replaces_serial)
            for event in events:
                seq = self._last_seq(db, event.node) + 1
                db.execute(
                    "INSERT INTO steps (node, step, state, message) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(node, step) DO UPDATE SET state = excluded.state, "
                    "message = excluded.message",
                    (event.node, event.step, event.state.value, event.message),
                )
                db.execute(
                    "INSERT INTO events (node, seq, step, state, message, percent, time, final) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        event.node,
                        seq,
                        event.step,
                        event.state.value,
                        event.message,
                        event.percent,
                        event.time,
                        int(event.final),
                    ),
                )
                recorded.append(dataclasses.replace(event, seq=seq))
            for update in updates:
                if update.state is not None:
                    db.execute(
                        "UPDATE nodes SET state = ?, message = ? WHERE name = ?",
                        (update.state.value, update.message, update.name),
                    )
                if update.last_seen is not None:
                    db.execute(
                        "UPDATE nodes SET last_seen = ? WHERE name = ?",
                        (update.last_seen, update.name),
                    )
        return recorded

    def events(self, node: str, after_seq: int = 0) -> list[EventRecord]:
        return [
            EventRecord(
                node=node,
                seq=int(seq),
                step=str(step),
                state=StepState(str(state)),
                message=str(message),
                percent=int(percent),
                time=float(time),
                final=bool(final),
            )
            for seq, step, state, message, percent, time, final in self._db.execute(
                "SELECT seq, step, state, message, percent, time, final FROM events "
                "WHERE node = ? AND seq > ? ORDER BY seq",
                (node, after_seq),
            )
        ]

    def last_seq(self, node: str) -> int:
        return self._last_seq(self._db, node)

    @staticmethod
    def _last_seq(db: sqlite3.Connection, node: str) -> int:
        """The node's last event's seq; after a rejoin, at least where its
        previous membership's events ended."""
        (last,) = db.execute(
            "SELECT MAX(COALESCE((SELECT MAX(seq) FROM events WHERE node = ?), 0), "
            "COALESCE((SELECT events_from FROM nodes WHERE name = ?), 0))",
            (node, node),
        ).fetchone()
        return int(last)

    def final_event(self, node: str) -> EventRecord | None:
        """The node's last event when it is a final one (its enrolment ended)."""
        events = self.events(node, self.last_seq(node) - 1)
        return events[-1] if events and events[-1].final else None

    # ------------------------------------------------------------ files --

    def write_secret(self, name: str, data: bytes) -> Path:
        path = self.state_dir / name
        write_private_file(path, data)
        return path

    def write_secrets(self, secrets: Mapping[str, bytes]) -> None:
        """Several key files at once (``write_private_files``): each replaced
        atomically, none renamed unless all were written."""
        write_private_files(
            [(self.state_dir / name, data, 0o600) for name, data in secrets.items()]
        )

    def credentials(self) -> NodeCredentials:
        """This node's key and certificate and the cluster CA, for mTLS."""
        key, cert, ca = (self.read_file(n) for n in (NODE_KEY, NODE_CERT, CA_CERT))
        if key is None or cert is None or ca is None:
            raise errors.NotInitialised(
                f"this node's cluster key or certificates are missing from {self.state_dir / 'tls'}"
            )
        return NodeCredentials(key_pem=key, cert_pem=cert, ca_pem=ca)

    def read_file(self, name: str) -> bytes | None:
        path = self.state_dir / name
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None


__all__ = ["Store", "write_private_file", "write_private_files"]
