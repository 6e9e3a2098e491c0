"""The ``group_*`` tables: meshd's state of each MLS group and which messages were group ones.

Writes go through the ``Store``'s lazy transaction, so they commit with the node's next
group commit. The MLS state itself lives in the engine's own database and is written
first (a crash in between leaves this state one change behind; catch-up repairs it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshd.address import NodeAddress
from meshd.e2e.groups_state import GroupState
from meshd.errors import StoreError
from meshd.store.store import Store


@dataclass(frozen=True, slots=True)
class GroupMessageRow:
    sender: NodeAddress
    message_id: bytes
    group_id: bytes
    app_id: str
    received_at: float
    content: bytes = b""  # from the history row (pruned with it: then empty)


class GroupTables:
    """Typed access to the group tables of one node's store (event-loop thread only)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _w(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        self._store._write(sql, params)

    def states(self) -> tuple[list[GroupState], list[str]]:
        """Every stored group state, and a line per unreadable row (left in place)."""
        out: list[GroupState] = []
        bad: list[str] = []
        for gid, blob in self._store._read("SELECT group_id, state FROM group_states"):
            try:
                out.append(GroupState.from_bytes(bytes(blob)))
            except StoreError as exc:
                bad.append(f"group {bytes(gid).hex()}: {exc}")
        return out, bad

    def save(self, state: GroupState, *, now: float) -> None:
        self._w(
            "INSERT OR REPLACE INTO group_states (group_id, state, updated_at) VALUES (?, ?, ?)",
            (state.group_id, state.to_bytes(), now),
        )

    def delete(self, group_id: bytes) -> None:
        self._w("DELETE FROM group_states WHERE group_id=?", (group_id,))

    def add_message(self, row: GroupMessageRow) -> None:
        self._w(
            "INSERT OR IGNORE INTO group_messages VALUES (?, ?, ?, ?, ?)",
            (row.sender.raw, row.message_id, row.group_id, row.app_id, row.received_at),
        )

    def messages(self, group_id: bytes, app_id: str, *, limit: int) -> list[GroupMessageRow]:
        """The app's messages received in the group, newest first, with their content."""
        rows = self._store._read(
            "SELECT g.sender, g.message_id, g.group_id, g.app_id, g.received_at, h.payload "
            "FROM group_messages g LEFT JOIN history h ON h.direction = 'incoming' "
            "AND h.peer = g.sender AND h.message_id = g.message_id "
            "WHERE g.group_id=? AND g.app_id=? ORDER BY g.received_at DESC LIMIT ?",
            (group_id, app_id, limit),
        )
        return [
            GroupMessageRow(
                NodeAddress(bytes(s)), bytes(m), bytes(g), str(a), float(t), bytes(p or b"")
            )
            for s, m, g, a, t, p in rows
        ]
