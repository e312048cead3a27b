"""The database schema: migrations applied in order (``Store._migrate``)."""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: the spine
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        address TEXT NOT NULL,
        hostname TEXT NOT NULL,
        state TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        cert_serial TEXT NOT NULL,
        cert_not_after REAL NOT NULL,
        joined REAL NOT NULL,
        last_seen REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE steps (
        node TEXT NOT NULL,
        step TEXT NOT NULL,
        state TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (node, step)
    );
    CREATE TABLE events (
        node TEXT NOT NULL,
        seq INTEGER NOT NULL,
        step TEXT NOT NULL,
        state TEXT NOT NULL,
        message TEXT NOT NULL,
        percent INTEGER NOT NULL,
        time REAL NOT NULL,
        final INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (node, seq)
    );
    CREATE TABLE revoked (serial TEXT PRIMARY KEY, node TEXT NOT NULL, time REAL NOT NULL);
    """,
    # 2: services as last reported by each node's agent
    """
    CREATE TABLE services (
        node TEXT NOT NULL,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (node, name)
    );
    """,
    # 3: where each node's agent listens
    """
    ALTER TABLE nodes ADD COLUMN agent_port INTEGER NOT NULL DEFAULT 0;
    """,
    # 4: one-time join tokens; only the SPAKE2 verifier derived from the
    # secret is kept, never the secret
    """
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        verifier BLOB NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        state TEXT NOT NULL
    );
    """,
    # 5: where a node's current membership's events start: a rejoin deletes
    # the old membership's events, and sequence numbers go on after them
    """
    ALTER TABLE nodes ADD COLUMN events_from INTEGER NOT NULL DEFAULT 0;
    """,
    # 6: what each service runs with (e.g. nova-compute's virt_type)
    """
    ALTER TABLE services ADD COLUMN detail TEXT NOT NULL DEFAULT '';
    """,
    # 7: a renewed certificate not yet used: it becomes the node's (and the
    # old serial revoked) at the node's first call with it
    """
    ALTER TABLE nodes ADD COLUMN pending_serial TEXT NOT NULL DEFAULT '';
    ALTER TABLE nodes ADD COLUMN pending_not_after REAL NOT NULL DEFAULT 0;
    """,
    # 8: the microstackd version and API each node last declared (versions.py)
    """
    ALTER TABLE nodes ADD COLUMN version TEXT NOT NULL DEFAULT '';
    ALTER TABLE nodes ADD COLUMN api_version TEXT NOT NULL DEFAULT '';
    """,
)
