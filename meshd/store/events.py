"""The per-app event log (what Subscribe reads and resumes from): part of ``Store``."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from meshd.address import NodeAddress
from meshd.errors import MeshdError, StoreError
from meshd.node_api import AppEvent, AppEventKind
from meshd.router.events import DeliveryState
from meshd.store.core import _HISTORY_COLS, _INSERT_EVENT, StoreCore, _record

# Retention of the event log (what Subscribe can resume from).
EVENT_RETENTION_COUNT = 100_000
EVENT_RETENTION_SECONDS = 7 * 24 * 3600.0


class EventLog(StoreCore):
    """Appending, reading and pruning the event log."""

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
            f"e.history_id, {_HISTORY_COLS}, h.group_id FROM events e LEFT JOIN history h "
            "ON h.id = e.history_id WHERE e.cursor > ? AND e.cursor <= ? "
            "AND (e.app_id = ? OR e.app_id IS NULL) ORDER BY e.cursor LIMIT ?",
            (cursor, self._last_cursor if upto is None else upto, app_id, limit),
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
        return cur.rowcount


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
