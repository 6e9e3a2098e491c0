"""Opening the state database: pragmas, integrity check, schema version and migrations."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from meshd.errors import StoreError

# history.cursor is the event-log cursor of the event that recorded the message (QUEUED
# for outgoing, MESSAGE_RECEIVED for incoming), so history pages and the event stream
# share one cursor space.
# Each entry migrates from version i to i + 1 (PRAGMA user_version). Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE apps (
        app_id      TEXT PRIMARY KEY,
        owner_uid   INTEGER NOT NULL,
        created_at  REAL NOT NULL
    );
    CREATE TABLE outbox (
        message_id  BLOB PRIMARY KEY,
        history_id  INTEGER NOT NULL,
        app_id      TEXT NOT NULL,
        dst         BLOB NOT NULL,
        created_at  REAL NOT NULL,
        expires_at  REAL NOT NULL,
        state       TEXT NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE history (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        cursor      INTEGER NOT NULL,
        message_id  BLOB NOT NULL,
        app_id      TEXT NOT NULL,
        direction   TEXT NOT NULL,
        peer        BLOB NOT NULL,
        payload     BLOB NOT NULL,
        created_at  REAL NOT NULL,
        state       TEXT,
        reason      TEXT,
        hops        INTEGER,
        UNIQUE (direction, peer, message_id)
    );
    CREATE INDEX history_app ON history (app_id, cursor);
    CREATE INDEX history_app_peer ON history (app_id, peer, cursor);
    CREATE INDEX history_message ON history (message_id);
    CREATE TABLE events (
        cursor      INTEGER PRIMARY KEY AUTOINCREMENT,
        app_id      TEXT,
        kind        TEXT NOT NULL,
        at          REAL NOT NULL,
        history_id  INTEGER,
        state       TEXT,
        reason      TEXT,
        peer        BLOB,
        detail      TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX events_at ON events (at);
    CREATE INDEX events_history ON events (history_id) WHERE history_id IS NOT NULL;
    CREATE TABLE peers (
        address       BLOB PRIMARY KEY,
        signing_key   BLOB NOT NULL,
        exchange_key  BLOB NOT NULL,
        first_seen    REAL NOT NULL,
        last_seen     REAL NOT NULL,
        endpoint      TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE paths (
        dst         BLOB PRIMARY KEY,
        next_hop    BLOB NOT NULL,
        hops        INTEGER NOT NULL,
        cost        REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE custody (
        frame_id     BLOB PRIMARY KEY,
        dst          BLOB NOT NULL,
        frame        BLOB NOT NULL,
        received_at  REAL NOT NULL,
        expires_at   REAL NOT NULL
    );
    """,
    # 1 -> 2: TOFU pins and contacts (meshd/crypto/tofu.py). Identities already seen are
    # pinned as they were last seen: a node upgraded in place starts with its pins.
    """
    CREATE TABLE contacts (
        address               BLOB PRIMARY KEY,
        signing_key           BLOB NOT NULL,
        exchange_key          BLOB NOT NULL,
        pending_exchange_key  BLOB,
        key_changed_at        REAL,
        name                  TEXT NOT NULL DEFAULT '',
        verified              INTEGER NOT NULL DEFAULT 0,
        first_seen            REAL NOT NULL,
        last_seen             REAL NOT NULL
    );
    INSERT INTO contacts (address, signing_key, exchange_key, first_seen, last_seen)
        SELECT address, signing_key, exchange_key, first_seen, last_seen FROM peers;
    """,
    # 2 -> 3: 1:1 end-to-end sessions and connection requests (meshd/store/sessions.py).
    """
    CREATE TABLE e2e_sessions (
        peer        BLOB PRIMARY KEY,
        group_id    BLOB NOT NULL,
        confirmed   INTEGER NOT NULL,
        welcome     BLOB,
        created_at  REAL NOT NULL
    );
    CREATE TABLE e2e_groups (
        group_id    BLOB PRIMARY KEY,
        peer        BLOB NOT NULL,
        created_at  REAL NOT NULL
    );
    CREATE TABLE e2e_pending (
        message_id  BLOB PRIMARY KEY,
        peer        BLOB NOT NULL,
        created_at  REAL NOT NULL,
        expires_at  REAL NOT NULL,
        flags       INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX e2e_pending_peer ON e2e_pending (peer, created_at);
    CREATE TABLE e2e_sealed (
        carrier_id  BLOB PRIMARY KEY,
        message_id  BLOB NOT NULL,
        peer        BLOB NOT NULL,
        group_id    BLOB NOT NULL,
        payload     BLOB NOT NULL,
        created_at  REAL NOT NULL,
        expires_at  REAL NOT NULL,
        done        INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX e2e_sealed_group ON e2e_sealed (group_id);
    CREATE TABLE e2e_peers (
        peer        BLOB PRIMARY KEY,
        accepted    INTEGER NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE e2e_requests (
        peer        BLOB NOT NULL,
        direction   TEXT NOT NULL,
        group_id    BLOB,
        app_id      TEXT NOT NULL,
        created_at  REAL NOT NULL,
        expires_at  REAL NOT NULL,
        PRIMARY KEY (peer, direction)
    );
    CREATE TABLE e2e_held (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        peer        BLOB NOT NULL,
        payload     BLOB NOT NULL,
        hops        INTEGER NOT NULL,
        received_at REAL NOT NULL
    );
    CREATE INDEX e2e_held_peer ON e2e_held (peer, id);
    CREATE TABLE e2e_settings (
        name        TEXT PRIMARY KEY,
        value       TEXT NOT NULL
    );
    """,
    # 3 -> 4: MLS groups (meshd/store/groups.py): meshd's per-group state (roles, views,
    # commit log, pending re-proposals) and which history rows are group messages.
    """
    CREATE TABLE group_states (
        group_id    BLOB PRIMARY KEY,
        state       BLOB NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE TABLE group_messages (
        sender      BLOB NOT NULL,
        message_id  BLOB NOT NULL,
        group_id    BLOB NOT NULL,
        app_id      TEXT NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (sender, message_id)
    );
    CREATE INDEX group_messages_group ON group_messages (group_id, received_at);
    """,
    # 4 -> 5: durable group sends (meshd/store/groups.py): every payload handed to the
    # core for a member (DATA, COMMIT, WELCOME, control, fragments) until its end-to-end
    # outcome, the payload stored once per fan-out; the per-message copy counts behind the
    # sender's aggregate delivery state; history rows name their group (NULL: 1:1).
    """
    CREATE TABLE group_payloads (
        digest      BLOB PRIMARY KEY,
        payload     BLOB NOT NULL
    );
    CREATE TABLE group_outbox (
        carrier_id  BLOB PRIMARY KEY,
        dst         BLOB NOT NULL,
        digest      BLOB NOT NULL,
        message_id  BLOB,
        created_at  REAL NOT NULL,
        expires_at  REAL NOT NULL,
        state       TEXT NOT NULL
    );
    CREATE INDEX group_outbox_digest ON group_outbox (digest);
    CREATE TABLE group_sent (
        message_id  BLOB PRIMARY KEY,
        copies      INTEGER NOT NULL,
        delivered   INTEGER NOT NULL DEFAULT 0,
        failed      INTEGER NOT NULL DEFAULT 0
    );
    ALTER TABLE history ADD COLUMN group_id BLOB;
    """,
    # 5 -> 6: coalesced 1:1 sends (meshd/e2e/coalesce.py): the app messages after the first
    # that ride in one sealed carrier (e2e_sealed, carrier_id = the first's message id),
    # so the carrier's delivery state reaches all of them, also after a restart.
    """
    CREATE TABLE e2e_batch (
        carrier_id  BLOB NOT NULL,
        message_id  BLOB NOT NULL,
        PRIMARY KEY (carrier_id, message_id)
    ) WITHOUT ROWID;
    """,
    # 6 -> 7: a group's applied commits, one row each, written once (meshd/store/groups.py):
    # group_states then holds only the rest (format 2, meshd/e2e/groups_codec.py).
    """
    CREATE TABLE group_log (
        group_id    BLOB NOT NULL,
        epoch       INTEGER NOT NULL,
        commit_id   BLOB NOT NULL,
        entry       BLOB NOT NULL,
        PRIMARY KEY (group_id, epoch)
    );
    """,
    # 7 -> 8: frames this node holds for others as custodian (meshd/store/router_state.py),
    # keyed like the core's custody store by (src, frame id): the older custody table was
    # keyed by frame id alone, so a frame from another source with a copied id could
    # replace one we had promised to keep. Times are unix seconds.
    """
    CREATE TABLE custody_frames (
        src         BLOB NOT NULL,
        frame_id    BLOB NOT NULL,
        dst         BLOB NOT NULL,
        frame       BLOB NOT NULL,
        held_at     REAL NOT NULL,
        hold_until  REAL NOT NULL,
        PRIMARY KEY (src, frame_id)
    );
    CREATE INDEX custody_frames_until ON custody_frames (hold_until);
    """,
    # 8 -> 9: the first custody table (keyed by frame id alone) was never written by the
    # daemon; custody_frames replaced it.
    """
    DROP TABLE IF EXISTS custody;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
# PRAGMA quick_check reads the whole file: ~120 ms for 160 MB here. Up to this size it runs
# before the node starts (a clear error at once); above it, in the background
# (Store.check_integrity), so that start to READY stays well under 1.5 s.
QUICK_CHECK_AT_OPEN_MAX_BYTES = 256 * 1024 * 1024


def open_database(path: Path, *, check: bool | None = None) -> sqlite3.Connection:
    """Open (creating if needed) and migrate; raise StoreError with a clear reason.

    ``check``: run PRAGMA quick_check now (None: when the file is not too big for it).

    The file is never deleted or rewritten on error: the operator decides what to do.
    """
    try:
        # Created 0600 up front; SQLite gives the -wal/-shm files the same mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
    except OSError as exc:
        raise StoreError(f"cannot open state database {path}: {exc.strerror}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open state database {path}: {exc}") from exc
    try:
        conn.execute("PRAGMA busy_timeout = 2000")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"state database {path}: cannot enable WAL (journal_mode={mode})")
        # NORMAL: a commit writes the WAL without fsync (crash-consistent, ~0.05 ms). What
        # must survive power loss (what was acknowledged to an app, or ACKed to a peer) is
        # made durable by Store.sync_wal(), an fsync of the WAL the node runs in a worker
        # thread once per group of commits, so the event loop never waits on the disk
        # (measured: FULL commits cost 0.3-6 ms each on this shared 2-core box).
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        if check is None:
            check = path.stat().st_size <= QUICK_CHECK_AT_OPEN_MAX_BYTES
        if check:
            quick_check(conn, path)
        _migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(
            f"state database {path} is unreadable ({exc}); it was left untouched: move it "
            "aside to start with an empty store"
        ) from exc
    except StoreError:
        conn.close()
        raise
    return conn


def quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """Raise StoreError naming the first problem when the file is damaged."""
    result = conn.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise StoreError(f"state database {path} is corrupted: {result}")


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"state database {path} has schema version {version}, newer than this meshd "
            f"understands ({SCHEMA_VERSION}); upgrade meshd"
        )
    for target in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[target].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
