"""The node's SQLite store: outbox, message history, per-app event log, peers, paths, custody.

One connection, used from the event-loop thread only. Writes open a transaction lazily;
the node commits once per event-loop pass (group commit). A commit survives kill -9 as
soon as it returns (the WAL is written); ``sync_wal`` (an fsync, safe to run in a worker
thread) makes it survive power loss too. Writes that must survive both (a message accepted
from an app, a message received from a peer) set ``durable_pending``: the node then holds
the app's reply and the outgoing frames (the ACK) until ``sync_wal`` has returned.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from meshd.address import NodeAddress
from meshd.crypto.identity import PublicIdentity
from meshd.errors import MeshdError, StoreError
from meshd.store.core import _hex
from meshd.store.events import EVENT_RETENTION_COUNT as EVENT_RETENTION_COUNT
from meshd.store.events import EVENT_RETENTION_SECONDS as EVENT_RETENTION_SECONDS
from meshd.store.messages import HISTORY_RETENTION_COUNT as HISTORY_RETENTION_COUNT
from meshd.store.messages import HISTORY_RETENTION_SECONDS as HISTORY_RETENTION_SECONDS
from meshd.store.messages import Messages
from meshd.store.messages import StoredOutbox as StoredOutbox
from meshd.store.schema import QUICK_CHECK_AT_OPEN_MAX_BYTES, open_database, quick_check

# The rest of the store lives in: core.py (connection, transactions, deferred writes),
# events.py (the event log), messages.py (outbox, incoming, history).


@dataclass(frozen=True, slots=True)
class StoredPeer:
    address: NodeAddress
    identity: PublicIdentity
    first_seen: float
    last_seen: float
    endpoint: str


@dataclass(frozen=True, slots=True)
class StoredPath:
    dst: NodeAddress
    next_hop: NodeAddress
    hops: int
    cost: float
    updated_at: float


class Store(Messages):
    """Typed access to the state database. Not thread-safe: event-loop thread only."""

    @classmethod
    def open(cls, path: Path) -> Store:
        return cls(open_database(path), path)

    @property
    def checked_at_open(self) -> bool:
        """False when the file was too big to check before start (see check_integrity)."""
        try:
            return self.path.stat().st_size <= QUICK_CHECK_AT_OPEN_MAX_BYTES
        except OSError:
            return True

    def check_integrity(self) -> None:
        """PRAGMA quick_check on a separate read-only connection: safe in a worker thread
        while the event loop keeps using the main one. Raises StoreError when damaged."""
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open state database {self.path}: {exc}") from exc
        try:
            quick_check(conn, self.path)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"state database {self.path} is corrupted: {exc}") from exc
        finally:
            conn.close()

    # --- apps ---------------------------------------------------------------------
    def app_owner(self, app_id: str) -> int | None:
        rows = self._read("SELECT owner_uid FROM apps WHERE app_id = ?", (app_id,))
        return int(rows[0][0]) if rows else None

    def claim_app(self, app_id: str, uid: int, now: float) -> None:
        self.durable_pending = True
        self._write(
            "INSERT OR IGNORE INTO apps (app_id, owner_uid, created_at) VALUES (?, ?, ?)",
            (app_id, uid, now),
        )

    # --- peers, paths, custody -----------------------------------------------------
    def upsert_peer(self, identity: PublicIdentity, *, now: float, endpoint: str = "") -> None:
        self._write(
            "INSERT INTO peers (address, signing_key, exchange_key, first_seen, last_seen, "
            "endpoint) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (address) DO UPDATE SET "
            "signing_key = excluded.signing_key, exchange_key = excluded.exchange_key, "
            "last_seen = excluded.last_seen, "
            "endpoint = CASE WHEN excluded.endpoint = '' THEN endpoint ELSE excluded.endpoint END",
            (
                identity.address.raw,
                identity.signing_key,
                identity.exchange_key,
                now,
                now,
                endpoint,
            ),
        )

    def peers(self) -> list[StoredPeer]:
        out: list[StoredPeer] = []
        for row in self._read(
            "SELECT address, signing_key, exchange_key, first_seen, last_seen, endpoint "
            "FROM peers ORDER BY last_seen DESC"
        ):
            try:
                identity = PublicIdentity(bytes(row[1]), bytes(row[2]))
                if identity.address.raw != bytes(row[0]):
                    raise StoreError("address does not match its signing key")
            except MeshdError as exc:
                raise StoreError(f"peers row {_hex(row[0])}: {exc}") from exc
            out.append(StoredPeer(identity.address, identity, row[3], row[4], row[5]))
        return out

    def set_path(
        self, dst: NodeAddress, next_hop: NodeAddress, hops: int, cost: float, *, now: float
    ) -> None:
        self._write(
            "INSERT OR REPLACE INTO paths (dst, next_hop, hops, cost, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (dst.raw, next_hop.raw, hops, cost, now),
        )

    def delete_path(self, dst: NodeAddress) -> None:
        self._write("DELETE FROM paths WHERE dst = ?", (dst.raw,))

    def paths(self) -> list[StoredPath]:
        out: list[StoredPath] = []
        for row in self._read("SELECT dst, next_hop, hops, cost, updated_at FROM paths"):
            try:
                dst, nh = NodeAddress(bytes(row[0])), NodeAddress(bytes(row[1]))
            except MeshdError as exc:
                raise StoreError(f"paths row {_hex(row[0])}: {exc}") from exc
            out.append(StoredPath(dst, nh, int(row[2]), float(row[3]), float(row[4])))
        return out
