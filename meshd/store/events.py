"""The per-app event log (what Subscribe reads and resumes from): part of ``Store``."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

from meshd.address import NodeAddress
from meshd.errors import MeshdError, StoreError
from meshd.node_api import AppEvent, AppEventKind, MessageRecord
from meshd.router.events import DeliveryState
from meshd.store.core import _HISTORY_COLS, _INSERT_EVENT, StoreCore, _record

# Retention of the event log (what Subscribe can resume from).
EVENT_RETENTION_COUNT = 100_000
EVENT_RETENTION_SECONDS = 7 * 24 * 3600.0

# The in-memory tail of committed events that live subscribers read instead of SQLite
# (the SELECT ... JOIN history per batch was 4-9 % of the receiving daemon's main thread
# at ~1400 msg/s; measured in-process, read + convert per received event 16-18 us from
# SQLite, 6.5 us from here). A subscriber keeps up within a few commits; one further
# behind, or resuming from an older cursor, reads the store. Bounded: TAIL_MAX to
# 2 * TAIL_MAX events (~1.3 KiB each with a 1 KiB payload).
TAIL_MAX = 1024
# history id -> record, for the state-change events of messages still in flight (so a
# SENT/DELIVERED event needs no join either). Bounded; a miss falls back to the store.
_TAIL_RECORDS = 2048

# One tail entry: (cursor, app_id, kind, at, history_id, record, state, reason, peer,
# detail). ``record`` None with a history id: the message is not known in memory, so a
# read that meets this entry is served by the store.
_Entry = tuple[
    int, "str | None", AppEventKind, float, "int | None", "MessageRecord | None",
    "DeliveryState | None", "str | None", "NodeAddress | None", str,
]  # fmt: skip


class EventLog(StoreCore):
    """Appending, reading and pruning the event log."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        super().__init__(conn, path)
        # Committed events with cursors (_tail_from, _tail_from + len(_tail)], all apps,
        # contiguous; _tail_new: appended since the last commit (not visible to anyone).
        self._tail: list[_Entry] = []
        self._tail_new: list[_Entry] = []
        self._tail_from = self._last_cursor
        self._tail_records: dict[int, MessageRecord] = {}

    def commit(self) -> None:
        """``StoreCore.commit``, then the events it made durable join the tail."""
        try:
            super().commit()
        except StoreError:
            self._tail_lost()
            raise
        new = self._tail_new
        if not new:
            return
        self._tail_new = []
        tail = self._tail
        if new[0][0] != self._tail_from + len(tail) + 1:  # not contiguous (cannot happen)
            tail.clear()
            self._tail_from = new[0][0] - 1
        tail.extend(new)
        if len(tail) > 2 * TAIL_MAX:
            drop = len(tail) - TAIL_MAX
            del tail[:drop]
            self._tail_from += drop

    def _flush(self) -> None:
        try:
            super()._flush()
        except StoreError:
            self._tail_lost()
            raise

    def _tail_lost(self) -> None:
        """A write or commit failed: which queued events reach the disk is unknown, so
        none of them is served from memory; readers use the store."""
        self._tail_new = []
        self._tail_reset()

    def _tail_reset(self) -> None:
        """Forget the committed tail: reads before the next committed event use the store."""
        self._tail = []
        self._tail_from = self._last_cursor - len(self._tail_new)

    def _tail_set_group(self, src: NodeAddress, message_id: bytes, group_id: bytes) -> None:
        """``set_group_id`` changed a received message's row: its tail entry follows."""
        for i in range(len(self._tail_new) - 1, -1, -1):
            entry = self._tail_new[i]
            rec = entry[5]
            if (
                rec is not None and entry[2] is AppEventKind.MESSAGE_RECEIVED
                and rec.message_id == message_id and rec.peer == src
            ):  # fmt: skip
                rec = replace(rec, group_id=group_id)
                self._tail_new[i] = (*entry[:5], rec, *entry[6:])
                if entry[4] is not None and entry[4] in self._tail_records:
                    self._tail_records[entry[4]] = rec
                return
        self._tail_reset()  # not found among the uncommitted ones: be exact, use the store

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
        record: MessageRecord | None = None,
    ) -> int:
        """Append one event (``app_id`` None: a node-wide event every app sees);
        ``record``: the history row ``history_id`` names, as just written (kept in memory
        for the tail)."""
        cursor = self._last_cursor + 1
        if history_id is not None:
            records = self._tail_records
            if record is not None:
                if len(records) >= _TAIL_RECORDS:
                    del records[next(iter(records))]  # the oldest
                records[history_id] = record
            else:
                record = records.get(history_id)
            if state is not None and state.is_final:
                records.pop(history_id, None)
        self._tail_new.append(
            (cursor, app_id, kind, at, history_id, record, state, reason, peer, detail)
        )
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
        cursor that a crash could hand out again). From the in-memory tail when it covers
        the range, else from the database (the same events either way)."""
        last = self._last_cursor if upto is None else upto
        tail = self._tail
        start = cursor - self._tail_from
        if start >= 0 and last <= self._tail_from + len(tail):
            out = _from_tail(tail, app_id, start, last - self._tail_from, limit)
            if out is not None:
                return out
        rows = self._read(
            "SELECT e.cursor, e.kind, e.at, e.state, e.reason, e.peer, e.detail, "
            f"e.history_id, {_HISTORY_COLS}, h.group_id FROM events e LEFT JOIN history h "
            "ON h.id = e.history_id WHERE e.cursor > ? AND e.cursor <= ? "
            "AND (e.app_id = ? OR e.app_id IS NULL) ORDER BY e.cursor LIMIT ?",
            (cursor, last, app_id, limit),
        )
        return [_event(row) for row in rows]

    def last_cursor(self) -> int:
        return self._last_cursor

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
        if cur.rowcount:
            # Pruned events must not be served from memory either (rare: beyond 100 000
            # events or 7 days); readers behind the next commit use the store.
            self._tail_reset()
        return cur.rowcount


def _from_tail(
    tail: list[_Entry], app_id: str, start: int, end: int, limit: int
) -> list[AppEvent] | None:
    """The app's events among ``tail[start:end]``, at most ``limit``; None when one of
    them names a message not held in memory (the caller reads the store)."""
    out: list[AppEvent] = []
    for i in range(start, end):
        cursor, app, kind, at, history_id, record, state, reason, peer, detail = tail[i]
        if app is not None and app != app_id:
            continue
        message = None
        if history_id is not None:
            if record is None:
                return None
            message = record
            if state is not None and (state is not record.state or reason != record.reason):
                # The state as of this event, not the latest (as _event does).
                message = MessageRecord(
                    record.message_id, record.app_id, record.direction, record.peer,
                    record.payload, record.created_at, state, reason, record.hops,
                    record.cursor, record.group_id,
                )  # fmt: skip
        out.append(AppEvent(cursor, kind, at, message, peer, detail))
        if len(out) >= limit:
            break
    return out


def _event(row: tuple[Any, ...] | list[Any]) -> AppEvent:
    cursor = int(row[0])
    try:
        kind = AppEventKind(row[1])
        message = None
        if row[7] is not None:
            message = _record(row[8:])
            if row[3] is not None:  # the state as of this event, not the latest
                message = replace(message, state=DeliveryState(row[3]), reason=row[4])
            if row[-1] is not None:  # h.group_id, selected last: a group message
                message = replace(message, group_id=bytes(row[-1]))
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
