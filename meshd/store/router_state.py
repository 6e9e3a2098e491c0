"""Router state in the node's store: frames held for others as custodian (custody_frames,
migration 8) and the persisted paths, read back at start.

Bounded by the core: a row exists only while the core's custody store (limited by
``CoreConfig.custody_limit_frames``/``_bytes``) holds the frame; the node deletes rows on
``CustodyReleased`` and those the core refuses at restore. Times are unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshd.address import NodeAddress
from meshd.errors import MeshdError
from meshd.router.events import CustodyReleased, CustodyTaken
from meshd.router.frames import Frame, decode_frame
from meshd.store.core import _hex

if TYPE_CHECKING:
    from meshd.router.core import MeshCore
    from meshd.store.store import Store


@dataclass(frozen=True, slots=True)
class CustodyRow:
    """One held frame as stored; ``frame`` decoded."""

    frame: Frame
    held_at: float
    hold_until: float


class RouterState:
    """Typed access to the router tables of one node's store (event-loop thread only)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _w(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        return int(self._store._write(sql, params).rowcount)

    def _r(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self._store._read(sql, params)

    # --- paths ----------------------------------------------------------------------
    def prune_paths(self, *, before: float) -> int:
        """Delete paths not updated since ``before`` (unix): too old to be hints, and the
        core's table evicts without telling, so this is what keeps the table bounded."""
        return self._w("DELETE FROM paths WHERE updated_at < ?", (before,))

    # --- custody --------------------------------------------------------------------
    def on_custody_event(self, event: CustodyTaken | CustodyReleased, *, wall: float,
                         offset: float) -> None:
        """Persist a core custody event; ``offset`` turns core time into unix time."""
        if isinstance(event, CustodyTaken):
            self.put_custody(event.frame, held_at=wall, hold_until=event.hold_until + offset)
            # The receipt queued with it is a promise to the sender: it waits for the fsync.
            self._store.durable_pending = True
        else:
            self.delete_custody(event.src, event.frame_id)

    def restore_custody(self, core: MeshCore, *, now: float, wall: float) -> tuple[int, int,
                                                                                  list[str]]:
        """Load held frames into ``core`` (unix -> its clock, as the outbox is restored);
        delete the rows it refused (expired, over its bounds, unreadable).
        Returns (restored, dropped, descriptions of unreadable rows)."""
        rows, bad = self.custody()
        for src, frame_id, _ in bad:
            self.delete_custody_raw(src, frame_id)
        if not rows:
            return 0, len(bad), [why for _, _, why in bad]
        offset = now - wall
        core.restore_custody([(r.frame, r.hold_until + offset) for r in rows], now=now)
        kept = {(f.src, f.frame_id) for f, _ in core.custody_records()}
        dropped = 0
        for r in rows:
            if (r.frame.src, r.frame.frame_id) not in kept:
                self.delete_custody(r.frame.src, r.frame.frame_id)
                dropped += 1
        return len(rows) - dropped, dropped + len(bad), [why for _, _, why in bad]

    def put_custody(self, frame: Frame, *, held_at: float, hold_until: float) -> None:
        """Record a frame taken in custody. Durable before the receipt: the caller sets
        ``durable_pending`` (a receipt is a promise to the sender, like an ACK)."""
        self._w(
            "INSERT OR REPLACE INTO custody_frames (src, frame_id, dst, frame, held_at, "
            "hold_until) VALUES (?, ?, ?, ?, ?, ?)",
            (frame.src.raw, frame.frame_id, frame.dst.raw, frame.encode(), held_at,
             hold_until),
        )

    def delete_custody(self, src: NodeAddress, frame_id: bytes) -> bool:
        return self._w(
            "DELETE FROM custody_frames WHERE src = ? AND frame_id = ?", (src.raw, frame_id)
        ) > 0

    def custody(self) -> tuple[list[CustodyRow], list[tuple[bytes, bytes, str]]]:
        """(rows oldest first, unreadable rows as (src, frame_id, why))."""
        rows: list[CustodyRow] = []
        bad: list[tuple[bytes, bytes, str]] = []
        for src, frame_id, blob, held_at, hold_until in self._r(
            "SELECT src, frame_id, frame, held_at, hold_until FROM custody_frames "
            "ORDER BY held_at"
        ):
            try:
                frame = decode_frame(bytes(blob))
                if frame.src.raw != bytes(src) or frame.frame_id != bytes(frame_id):
                    raise MeshdError("key does not match the stored frame")
            except MeshdError as exc:
                bad.append((bytes(src), bytes(frame_id),
                            f"custody row {_hex(bytes(frame_id))}: {exc}"))
                continue
            rows.append(CustodyRow(frame, float(held_at), float(hold_until)))
        return rows, bad

    def delete_custody_raw(self, src: bytes, frame_id: bytes) -> None:
        """Delete a row by its raw key (one that does not decode)."""
        self._w("DELETE FROM custody_frames WHERE src = ? AND frame_id = ?", (src, frame_id))

    def custody_count(self) -> int:
        return int(self._r("SELECT COUNT(*) FROM custody_frames")[0][0])
