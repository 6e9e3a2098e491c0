"""The node's SQLite store: outbox, message history, per-app event log, peers, paths, custody.

One connection, used from the event-loop thread only. Writes open a transaction lazily;
the node commits once per event-loop pass (group commit). A commit survives kill -9 as
soon as it returns (the WAL is written); ``sync_wal`` (an fsync, safe to run in a worker
thread) makes it survive power loss too. Writes that must survive both (a message accepted
from an app, a message received from a peer) set ``durable_pending``: the node then holds
the app's reply and the outgoing frames (the ACK) until ``sync_wal`` has returned.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from meshd.address import NodeAddress
from meshd.crypto.identity import PublicIdentity
from meshd.envelope import Envelope
from meshd.errors import MeshdError, StoreError
from meshd.node_api import AppEvent, AppEventKind, Direction, MessageRecord
from meshd.router.events import DeliveryState
from meshd.store.schema import QUICK_CHECK_AT_OPEN_MAX_BYTES, open_database, quick_check

# Retention of the event log (what Subscribe can resume from).
EVENT_RETENTION_COUNT = 100_000
EVENT_RETENTION_SECONDS = 7 * 24 * 3600.0
# Message history: 90 days or the last million messages, whichever is smaller.
HISTORY_RETENTION_COUNT = 1_000_000
HISTORY_RETENTION_SECONDS = 90 * 24 * 3600.0

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

_HISTORY_COLS = (
    "h.id, h.cursor, h.message_id, h.app_id, h.direction, h.peer, h.payload, h.created_at, "
    "h.state, h.reason, h.hops"
)


@dataclass(frozen=True, slots=True)
class StoredOutbox:
    """An outbox row: times are unix seconds (the core's monotonic times do not survive)."""

    message_id: bytes
    app_id: str
    dst: NodeAddress
    payload: bytes  # the encoded app envelope, as handed to the core
    created_at: float
    expires_at: float
    state: DeliveryState
    attempts: int


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


@dataclass(frozen=True, slots=True)
class StoredCustody:
    frame_id: bytes
    dst: NodeAddress
    frame: bytes
    received_at: float
    expires_at: float


class Store:
    """Typed access to the state database. Not thread-safe: event-loop thread only."""

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

    # --- transactions -------------------------------------------------------------
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
    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        if self._pending_rows:
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
        if self._pending_rows:
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

    # --- outgoing messages ---------------------------------------------------------
    def add_outgoing(
        self,
        *,
        message_id: bytes,
        app_id: str,
        dst: NodeAddress,
        content: bytes,
        created_at: float,
        expires_at: float,
    ) -> MessageRecord:
        """History row + outbox row (pointing at it: the payload is stored once) + a
        QUEUED event for the app; returns the record."""
        self.durable_pending = True
        record = MessageRecord(
            message_id=message_id,
            app_id=app_id,
            direction=Direction.OUTGOING,
            peer=dst,
            payload=content,
            created_at=created_at,
            state=DeliveryState.QUEUED,
            reason=None,
            hops=None,
        )
        history_id = self._last_history_id + 1
        self._last_history_id = history_id
        params = _history_params(record, self._last_cursor + 1)
        self._queued_history[history_id] = len(self._pending[_INSERT_HISTORY])
        self._defer(_INSERT_HISTORY, (history_id, *params))
        cursor = self.append_event(
            app_id,
            AppEventKind.DELIVERY_STATE,
            created_at,
            history_id=history_id,
            state=DeliveryState.QUEUED,
            peer=dst,
        )
        record = replace(record, cursor=cursor)
        self._defer(
            _INSERT_OUTBOX,
            (message_id, history_id, app_id, dst.raw, created_at, expires_at, "queued"),
        )
        self._inflight[message_id] = (history_id, app_id, dst.raw, DeliveryState.QUEUED)
        return record

    def set_outgoing_state(
        self, message_id: bytes, state: DeliveryState, reason: str | None, *, at: float
    ) -> int | None:
        """Record a delivery state change and its event; the event cursor, or None when
        ``message_id`` is not a message of ours or the state is unchanged (then nothing is
        written)."""
        known = self._inflight.get(message_id)
        if known is None:
            rows = self._read(
                "SELECT id, app_id, peer, state FROM history "
                "WHERE message_id = ? AND direction = ?",
                (message_id, Direction.OUTGOING.value),
            )
            if not rows:
                return None
            try:
                last = DeliveryState(rows[0][3])
            except ValueError as exc:
                raise StoreError(f"history row id={rows[0][0]}: {exc}") from exc
            known = (int(rows[0][0]), str(rows[0][1]), bytes(rows[0][2]), last)
        history_id, app_id, peer, last = known
        if state is last and reason is None:
            return None
        if not state.is_final:
            self._inflight[message_id] = (history_id, app_id, peer, state)
        queued = self._queued_history.get(history_id)
        if queued is None:
            self._defer(_UPDATE_HISTORY, (state.value, reason, history_id))
        else:
            rows = self._pending[_INSERT_HISTORY]
            row = rows[queued]
            rows[queued] = (*row[:_HISTORY_STATE], state.value, reason, *row[_HISTORY_STATE + 2 :])
        if state.is_final:
            self._inflight.pop(message_id, None)
            self._defer(_DELETE_OUTBOX, (message_id,))
        elif state is DeliveryState.HELD_BY_CUSTODIAN:
            # The one transient state restore() needs (the sender stops retrying); SENT and
            # RELAYED are rebuilt by the core, so they cost no outbox write.
            self._defer(_UPDATE_OUTBOX_STATE, (state.value, message_id))
        return self.append_event(
            app_id,
            AppEventKind.DELIVERY_STATE,
            at,
            history_id=history_id,
            state=state,
            reason=reason,
            peer=NodeAddress(bytes(peer)),
        )

    def set_attempts(self, attempts: list[tuple[bytes, int]]) -> None:
        for message_id, n in attempts:
            self._defer(_UPDATE_OUTBOX_ATTEMPTS, (n, message_id))

    def outbox(self) -> tuple[list[StoredOutbox], list[str]]:
        """Every outbox row that decodes, and one error line per row that does not (those
        rows are left in the database untouched)."""
        good: list[StoredOutbox] = []
        bad: list[str] = []
        for row in self._read(
            "SELECT o.message_id, o.app_id, o.dst, h.payload, o.created_at, o.expires_at, "
            "o.state, o.attempts, o.history_id FROM outbox o LEFT JOIN history h "
            "ON h.id = o.history_id ORDER BY o.created_at"
        ):
            try:
                if row[3] is None:
                    raise StoreError(f"its history row {row[8]} is missing")
                entry = StoredOutbox(
                    message_id=_blob(row[0], 8, "message_id"),
                    app_id=str(row[1]),
                    dst=NodeAddress(bytes(row[2])),
                    payload=Envelope(str(row[1]), bytes(row[3])).encode(),
                    created_at=float(row[4]),
                    expires_at=float(row[5]),
                    state=DeliveryState(row[6]),
                    attempts=int(row[7]),
                )
            except (MeshdError, ValueError, TypeError) as exc:
                bad.append(f"outbox row message_id={_hex(row[0])}: {exc}")
                continue
            good.append(entry)
            self._inflight[entry.message_id] = (
                int(row[8]), entry.app_id, entry.dst.raw, entry.state
            )
        return good, bad

    def outbox_count(self) -> int:
        return int(self._read("SELECT count(*) FROM outbox")[0][0])

    # --- incoming messages ---------------------------------------------------------
    def add_incoming(
        self,
        *,
        message_id: bytes,
        app_id: str,
        src: NodeAddress,
        content: bytes,
        received_at: float,
        hops: int,
    ) -> MessageRecord | None:
        """History row + MESSAGE_RECEIVED event; None when this (src, id) was stored before
        (a retransmission after a restart: delivered to the app once only)."""
        record = MessageRecord(
            message_id=message_id,
            app_id=app_id,
            direction=Direction.INCOMING,
            peer=src,
            payload=content,
            created_at=received_at,
            state=None,
            reason=None,
            hops=hops,
        )
        history_id = self._last_history_id + 1
        try:
            if not self._conn.in_transaction:
                self._conn.execute("BEGIN IMMEDIATE")
            # Now, not deferred: the UNIQUE constraint decides whether it is new (one
            # statement, no SELECT first). It may run before the queued writes: none of
            # them touches an incoming history row, and the id is past every queued one.
            cur = self._conn.execute(
                "INSERT OR IGNORE" + _INSERT_HISTORY[6:],
                (history_id, *_history_params(record, self._last_cursor + 1)),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"state database {self.path}: write failed: {exc}") from exc
        if cur.rowcount == 0:
            return None
        self._last_history_id = history_id
        self.durable_pending = True
        cursor = self.append_event(
            app_id, AppEventKind.MESSAGE_RECEIVED, received_at, history_id=history_id, peer=src
        )
        return replace(record, cursor=cursor)

    # --- history -------------------------------------------------------------------
    def history(
        self,
        app_id: str,
        *,
        peer: NodeAddress | None,
        limit: int,
        before_cursor: int | None,
    ) -> list[MessageRecord]:
        """Newest first."""
        sql = f"SELECT {_HISTORY_COLS} FROM history h WHERE h.app_id = ?"
        params: list[Any] = [app_id]
        if peer is not None:
            sql += " AND h.peer = ?"
            params.append(peer.raw)
        if before_cursor is not None:
            sql += " AND h.cursor < ?"
            params.append(before_cursor)
        sql += " ORDER BY h.cursor DESC LIMIT ?"
        params.append(limit)
        return [_record(row) for row in self._read(sql, tuple(params))]

    def get_message(self, app_id: str, message_id: bytes) -> MessageRecord | None:
        """Outgoing first (ids we chose are unique), else the newest incoming one."""
        rows = self._read(
            f"SELECT {_HISTORY_COLS} FROM history h WHERE h.app_id = ? AND h.message_id = ? "
            "ORDER BY h.direction = 'outgoing' DESC, h.cursor DESC LIMIT 1",
            (app_id, message_id),
        )
        return _record(rows[0]) if rows else None

    # --- event log -----------------------------------------------------------------
    def append_event(
        self,
        app_id: str | None,
        kind: AppEventKind,
        at: float,
        *,
        history_id: int | None = None,
        state: DeliveryState | None = None,
        reason: str | None = None,
        peer: NodeAddress | None = None,
        detail: str = "",
    ) -> int:
        """Append one event (``app_id`` None: a node-wide event every app sees)."""
        cursor = self._last_cursor + 1
        self._defer(
            _INSERT_EVENT,
            (
                cursor,
                app_id,
                kind.value,
                at,
                history_id,
                state.value if state else None,
                reason,
                peer.raw if peer else None,
                detail,
            ),
        )
        self._last_cursor = cursor
        return cursor

    def events_after(
        self, app_id: str, cursor: int, *, limit: int, upto: int | None = None
    ) -> list[AppEvent]:
        """Events after ``cursor`` for ``app_id`` (and node-wide ones), at most up to
        ``upto`` (the node passes its last committed cursor: an app must never see a
        cursor that a crash could hand out again)."""
        rows = self._read(
            "SELECT e.cursor, e.kind, e.at, e.state, e.reason, e.peer, e.detail, "
            f"e.history_id, {_HISTORY_COLS} FROM events e LEFT JOIN history h "
            "ON h.id = e.history_id WHERE e.cursor > ? AND e.cursor <= ? "
            "AND (e.app_id = ? OR e.app_id IS NULL) ORDER BY e.cursor LIMIT ?",
            (cursor, self._last_cursor if upto is None else upto, app_id, limit),
        )
        return [_event(row) for row in rows]

    def last_cursor(self) -> int:
        return self._last_cursor

    def _sequence(self, table: str) -> int:
        rows = self._read("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,))
        return int(rows[0][0]) if rows else 0

    def prune_events(
        self,
        *,
        now: float,
        keep: int = EVENT_RETENTION_COUNT,
        max_age: float = EVENT_RETENTION_SECONDS,
        limit: int = 5000,
    ) -> int:
        """Drop up to ``limit`` of the oldest events beyond the retention bounds (~1 ms per
        1000 here, so one call stays short on the event loop); returns how many went."""
        last = self.last_cursor()
        cur = self._write(
            "DELETE FROM events WHERE cursor IN (SELECT cursor FROM events "
            "WHERE cursor <= ? OR at < ? ORDER BY cursor LIMIT ?)",
            (last - keep, now - max_age, limit),
        )
        return cur.rowcount

    def prune_history(
        self,
        *,
        now: float,
        keep: int = HISTORY_RETENTION_COUNT,
        max_age: float = HISTORY_RETENTION_SECONDS,
        batch: int = 500,
        max_batches: int = 10,
    ) -> int:
        """Drop the oldest messages beyond the retention bounds, except those still in the
        outbox or named by a retained event; returns how many went. Walks from the oldest
        id in small batches (each a few ms), so a call never holds the loop for long; a
        backlog clears over successive maintenance passes."""
        newest = int(self._read("SELECT coalesce(max(id), 0) FROM history")[0][0])
        cutoff = now - max_age
        removed = 0
        after = 0
        for _ in range(max_batches):
            rows = self._read(
                "SELECT id, created_at FROM history WHERE id > ? ORDER BY id LIMIT ?",
                (after, batch),
            )
            old = []
            for history_id, created_at in rows:
                if created_at >= cutoff and history_id > newest - keep:
                    break  # ids grow with time: everything after is within bounds too
                old.append(int(history_id))
            if not old:
                break
            lo, hi = old[0], old[-1]
            cur = self._write(
                "DELETE FROM history WHERE id BETWEEN ? AND ? "
                "AND id NOT IN (SELECT history_id FROM outbox) "
                "AND id NOT IN (SELECT history_id FROM events "
                "WHERE history_id BETWEEN ? AND ?)",
                (lo, hi, lo, hi),
            )
            removed += cur.rowcount
            after = hi
            if len(old) < len(rows) or len(rows) < batch:
                break
        return removed

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

    def put_custody(self, item: StoredCustody) -> None:
        self._write(
            "INSERT OR REPLACE INTO custody (frame_id, dst, frame, received_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (item.frame_id, item.dst.raw, item.frame, item.received_at, item.expires_at),
        )

    def delete_custody(self, frame_id: bytes) -> None:
        self._write("DELETE FROM custody WHERE frame_id = ?", (frame_id,))

    def custody(self) -> list[StoredCustody]:
        out: list[StoredCustody] = []
        for row in self._read(
            "SELECT frame_id, dst, frame, received_at, expires_at FROM custody "
            "ORDER BY received_at"
        ):
            try:
                dst = NodeAddress(bytes(row[1]))
            except MeshdError as exc:
                raise StoreError(f"custody row {_hex(row[0])}: {exc}") from exc
            out.append(StoredCustody(bytes(row[0]), dst, bytes(row[2]), row[3], row[4]))
        return out


def _hex(value: object) -> str:
    return value.hex() if isinstance(value, bytes) else repr(value)


def _blob(value: object, length: int, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise StoreError(f"{name} is not {length} bytes")
    return value


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


def _event(row: tuple[Any, ...] | list[Any]) -> AppEvent:
    cursor = int(row[0])
    try:
        kind = AppEventKind(row[1])
        message = None
        if row[7] is not None:
            message = _record(row[8:])
            if row[3] is not None:  # the state as of this event, not the latest
                message = replace(message, state=DeliveryState(row[3]), reason=row[4])
        peer = NodeAddress(bytes(row[5])) if row[5] is not None else None
        return AppEvent(
            cursor=cursor,
            kind=kind,
            at=float(row[2]),
            message=message,
            peer=peer,
            detail=str(row[6]),
        )
    except StoreError as exc:
        raise StoreError(f"event cursor={cursor}: {exc}") from exc
    except (MeshdError, ValueError, TypeError) as exc:
        raise StoreError(f"event cursor={cursor} does not decode: {exc}") from exc
