"""Store plumbing: the connection, lazy transactions, the batched (deferred) writes and
the history-row codec shared by the message and event-log parts of ``Store``.

One connection, used from the event-loop thread only (see ``meshd.store.store``).
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meshd.address import NodeAddress
from meshd.errors import MeshdError, StoreError
from meshd.node_api import Direction, MessageRecord
from meshd.router.events import DeliveryState

# The per-message statements, batched (see Store._defer): one executemany per statement
# per group commit instead of ~8 execute calls per outgoing message (measured: the store
# was ~15 % of the sending daemon's CPU, mostly per-call overhead of execute).
_INSERT_HISTORY = (
    "INSERT INTO history (id, cursor, message_id, app_id, direction, peer, payload, "
    "created_at, state, reason, hops) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_HISTORY_STATE = 8  # index of state (then reason) in an _INSERT_HISTORY row
_UPDATE_HISTORY = "UPDATE history SET state = ?, reason = ? WHERE id = ?"
_INSERT_OUTBOX = (
    "INSERT INTO outbox (message_id, history_id, app_id, dst, created_at, expires_at, "
    "state, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, 0)"
)
_UPDATE_OUTBOX_STATE = "UPDATE outbox SET state = ? WHERE message_id = ?"
_UPDATE_OUTBOX_ATTEMPTS = "UPDATE outbox SET attempts = ? WHERE message_id = ?"
_DELETE_OUTBOX = "DELETE FROM outbox WHERE message_id = ?"
_INSERT_EVENT = (
    "INSERT INTO events (cursor, app_id, kind, at, history_id, state, reason, peer, "
    "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Flush order. Statements of one kind keep their order; across kinds this order is the
# only one the store produces for one row: a history row is inserted before it is
# updated, an outbox row inserted, then updated, then deleted (message ids are never
# reused); events rows are only inserted, each with its own cursor, and no table has a
# foreign key or trigger.
_DEFERRED = (
    _INSERT_HISTORY,
    _UPDATE_HISTORY,
    _INSERT_OUTBOX,
    _UPDATE_OUTBOX_STATE,
    _UPDATE_OUTBOX_ATTEMPTS,
    _DELETE_OUTBOX,
    _INSERT_EVENT,
)

# Tables the deferred writes touch: only a statement naming one of them must run after
# the queued rows (no trigger or foreign key reaches them from other tables). Other
# tables' writes (e.g. the e2e layer's, ~2 per message) used to flush the queue each time,
# which undid the batching (profiled: the flush was 6 % of the sending daemon's time).
_DEFERRED_TABLES = re.compile(r"\b(history|outbox|events|sqlite_sequence)\b", re.IGNORECASE)
_SQL_CACHE = 512

_HISTORY_COLS = (
    "h.id, h.cursor, h.message_id, h.app_id, h.direction, h.peer, h.payload, h.created_at, "
    "h.state, h.reason, h.hops"
)


class StoreCore:
    """Connection, transactions and deferred writes; ``Store`` adds the typed tables."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._wal_path = str(path) + "-wal"
        # Set by writes that must reach the disk before anyone is told (see module doc).
        self.durable_pending = False
        # Outbox messages: message_id -> (history id, app id, dst, state), saves a SELECT
        # per delivery state change (several per message) and drops repeats (the core
        # reports QUEUED for a send that add_outgoing already recorded as QUEUED).
        self._inflight: dict[bytes, tuple[int, str, bytes, DeliveryState]] = {}
        # Writes not yet executed: statement -> parameter rows (order: _DEFERRED). Run as
        # one executemany each before any other statement, read or commit (_flush), so
        # every reader on this connection sees them; nothing is told before the commit.
        self._pending: dict[str, list[tuple[Any, ...]]] = {sql: [] for sql in _DEFERRED}
        self._pending_rows = 0
        self._ordered: dict[str, bool] = {}  # statement -> it must follow the queued rows
        # history id -> index of its queued INSERT: a state change before the flush edits
        # that row instead of queueing an UPDATE (the UPDATE rewrites the whole row, 1 KiB
        # payload included; under load SENT came before the flush for ~every message).
        self._queued_history: dict[int, int] = {}
        # The next event cursor, assigned here so a history row is written once with its
        # cursor. AUTOINCREMENT's sqlite_sequence also remembers pruned cursors.
        self._last_cursor = self._sequence("events")
        # History ids are assigned here too, so an outgoing row needs no lastrowid and its
        # INSERT can be batched; AUTOINCREMENT still never reuses them (sqlite_sequence
        # follows explicit ids).
        self._last_history_id = self._sequence("history")

    # --- transactions -------------------------------------------------------------
    @property
    def connection(self) -> sqlite3.Connection:
        """The connection, for a part of the node that keeps its own tables in this
        database and writes them in the same transaction (the MLS state); loop thread."""
        return self._conn

    @property
    def in_transaction(self) -> bool:
        return self._pending_rows > 0 or self._conn.in_transaction

    def commit(self) -> None:
        """Make every write since the last commit durable (no-op when nothing is pending)."""
        if self._pending_rows:
            self._flush()
        if self._conn.in_transaction:
            with self._errors("commit"):
                self._conn.execute("COMMIT")

    def sync_wal(self) -> None:
        """fsync the WAL: every commit so far survives power loss. Thread-safe (os calls
        only); a checkpointed WAL was synced by SQLite itself before it was reused."""
        try:
            fd = os.open(self._wal_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot open {self._wal_path}: {exc.strerror}") from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise StoreError(f"fsync {self._wal_path} failed: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def close(self) -> None:
        try:
            self.commit()
            self.sync_wal()
        finally:
            self._conn.close()

    # _write/_read catch inline rather than through _errors(): they run ~15 times per
    # message and the context manager was 8 % of the store's time in the daemon profile.
    def _after_queued(self, sql: str) -> bool:
        """Whether ``sql`` names a table with queued rows (cached per statement)."""
        hit = self._ordered.get(sql)
        if hit is None:
            if len(self._ordered) >= _SQL_CACHE:  # statements are constants; bounded anyway
                self._ordered.clear()
            hit = self._ordered[sql] = _DEFERRED_TABLES.search(sql) is not None
        return hit

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        if self._pending_rows and self._after_queued(sql):
            self._flush()
        try:
            if not self._conn.in_transaction:
                self._conn.execute("BEGIN IMMEDIATE")
            return self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self.path}: write failed: {exc}") from exc

    def _defer(self, sql: str, params: tuple[Any, ...]) -> None:
        """Queue one of the ``_DEFERRED`` writes; it runs at the next flush."""
        self._pending[sql].append(params)
        self._pending_rows += 1

    def _flush(self) -> None:
        """Run the queued writes, one executemany per statement, in ``_DEFERRED`` order."""
        pending = self._pending
        self._pending = {sql: [] for sql in _DEFERRED}
        self._pending_rows = 0
        self._queued_history.clear()
        try:
            if not self._conn.in_transaction:
                self._conn.execute("BEGIN IMMEDIATE")
            for sql, rows in pending.items():
                if len(rows) == 1:
                    self._conn.execute(sql, rows[0])
                elif rows:
                    self._conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self.path}: write failed: {exc}") from exc

    def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        if self._pending_rows and self._after_queued(sql):
            self._flush()
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self.path}: read failed: {exc}") from exc

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self.path}: {what} failed: {exc}") from exc

    def _sequence(self, table: str) -> int:
        rows = self._read("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
        return int(rows[0][0]) if rows else 0


def _hex(value: object) -> str:
    return value.hex() if isinstance(value, bytes) else repr(value)


def _history_params(rec: MessageRecord, cursor: int) -> tuple[Any, ...]:
    """The ``_INSERT_HISTORY`` values after ``id``; ``cursor``: its event's (the next)."""
    return (
        cursor,
        rec.message_id,
        rec.app_id,
        rec.direction.value,
        rec.peer.raw,
        rec.payload,
        rec.created_at,
        rec.state.value if rec.state else None,
        rec.reason,
        rec.hops,
    )


def _record(row: tuple[Any, ...] | list[Any]) -> MessageRecord:
    """Decode the ``_HISTORY_COLS`` columns (``row[0]`` is history.id)."""
    try:
        direction = Direction(row[4])
        return MessageRecord(
            message_id=bytes(row[2]),
            app_id=str(row[3]),
            direction=direction,
            peer=NodeAddress(bytes(row[5])),
            payload=bytes(row[6]),
            created_at=float(row[7]),
            state=DeliveryState(row[8]) if row[8] is not None else None,
            reason=row[9],
            hops=int(row[10]) if row[10] is not None else None,
            cursor=int(row[1]),
        )
    except (MeshdError, ValueError, TypeError) as exc:
        raise StoreError(f"history row id={row[0]} does not decode: {exc}") from exc
