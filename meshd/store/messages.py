"""Messages: the outbox, incoming messages and the message history: part of ``Store``."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, replace
from typing import Any

from meshd.address import NodeAddress
from meshd.envelope import Envelope
from meshd.errors import MeshdError, StoreError
from meshd.node_api import AppEventKind, Direction, MessageRecord
from meshd.router.events import DeliveryState
from meshd.store.core import (
    _DELETE_OUTBOX,
    _HISTORY_COLS,
    _HISTORY_STATE,
    _INSERT_HISTORY,
    _INSERT_OUTBOX,
    _UPDATE_HISTORY,
    _UPDATE_OUTBOX_ATTEMPTS,
    _UPDATE_OUTBOX_STATE,
    _hex,
    _history_params,
    _record,
)
from meshd.store.events import EventLog

# Message history: 90 days or the last million messages, whichever is smaller.
HISTORY_RETENTION_COUNT = 1_000_000
HISTORY_RETENTION_SECONDS = 90 * 24 * 3600.0
_INSERT_GROUP_HISTORY = _INSERT_HISTORY.replace("hops)", "hops, group_id)").replace("?)", "?, ?)")


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


class Messages(EventLog):
    """Outgoing and incoming messages, their history and its pruning."""

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
        # Built once with its cursor, the QUEUED event's (appended below): a
        # dataclasses.replace per message cost more than the record itself.
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
            cursor=self._last_cursor + 1,
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
            record=record,
        )
        assert cursor == record.cursor
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
        hops: int | None,
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
            cursor=self._last_cursor + 1,  # its MESSAGE_RECEIVED event's (appended below)
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
            app_id, AppEventKind.MESSAGE_RECEIVED, received_at, history_id=history_id, peer=src,
            record=record,
        )
        assert cursor == record.cursor
        return record

    # --- group messages (meshd/node_groups.py) --------------------------------------
    def add_group_outgoing(
        self,
        *,
        message_id: bytes,
        app_id: str,
        group_id: bytes,
        sender: NodeAddress,
        content: bytes,
        created_at: float,
    ) -> MessageRecord:
        """A group message this node sent: history row (peer: ``sender``, this node) + a
        QUEUED event. No outbox row: the group layer keeps the copies per member."""
        self.durable_pending = True
        cursor = self._last_cursor + 1
        record = MessageRecord(
            message_id=message_id, app_id=app_id, direction=Direction.OUTGOING, peer=sender,
            payload=content, created_at=created_at, state=DeliveryState.QUEUED, reason=None,
            hops=None, cursor=cursor, group_id=group_id,
        )  # fmt: skip
        history_id = self._last_history_id + 1
        self._write(
            _INSERT_GROUP_HISTORY,
            (history_id, *_history_params(record, cursor), group_id),
        )
        self._last_history_id = history_id
        got = self.append_event(app_id, AppEventKind.DELIVERY_STATE, created_at,
                                history_id=history_id, state=DeliveryState.QUEUED,
                                peer=sender, record=record)  # fmt: skip
        assert got == cursor
        return record

    def set_group_id(self, src: NodeAddress, message_id: bytes, group_id: bytes) -> None:
        """Mark a received history row (just added by ``add_incoming``) as a group one."""
        self._write(
            "UPDATE history SET group_id = ? "
            "WHERE direction = 'incoming' AND peer = ? AND message_id = ?",
            (group_id, src.raw, message_id),
        )
        self._tail_set_group(src, message_id, group_id)

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
        sql = f"SELECT {_HISTORY_COLS}, h.group_id FROM history h WHERE h.app_id = ?"
        params: list[Any] = [app_id]
        if peer is not None:
            sql += " AND h.peer = ?"
            params.append(peer.raw)
        if before_cursor is not None:
            sql += " AND h.cursor < ?"
            params.append(before_cursor)
        sql += " ORDER BY h.cursor DESC LIMIT ?"
        params.append(limit)
        return [_grouped(row) for row in self._read(sql, tuple(params))]

    def get_message(self, app_id: str, message_id: bytes) -> MessageRecord | None:
        """Outgoing first (ids we chose are unique), else the newest incoming one."""
        rows = self._read(
            f"SELECT {_HISTORY_COLS}, h.group_id FROM history h "
            "WHERE h.app_id = ? AND h.message_id = ? "
            "ORDER BY h.direction = 'outgoing' DESC, h.cursor DESC LIMIT 1",
            (app_id, message_id),
        )
        return _grouped(rows[0]) if rows else None

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


def _grouped(row: tuple[Any, ...]) -> MessageRecord:
    """``_record`` of the ``_HISTORY_COLS`` plus ``h.group_id`` (NULL for 1:1 messages)."""
    record = _record(row)
    return record if row[11] is None else replace(record, group_id=bytes(row[11]))


def _blob(value: object, length: int, name: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise StoreError(f"{name} is not {length} bytes")
    return value
