"""The ``group_*`` tables: meshd's state of each MLS group and which messages were group ones.

Writes go through the ``Store``'s lazy transaction, so they commit with the node's next
group commit. The MLS state itself lives in the engine's own database and is written
first (a crash in between leaves this state one change behind; catch-up repairs it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from meshd.address import NodeAddress
from meshd.e2e.groups_codec import MAGIC, decode_entry, decode_state, encode_entry, encode_state
from meshd.e2e.groups_state import GroupState
from meshd.errors import MeshdError, StoreError
from meshd.router.events import DeliveryState
from meshd.store.store import Store


@dataclass(frozen=True, slots=True)
class GroupMessageRow:
    sender: NodeAddress
    message_id: bytes
    group_id: bytes
    app_id: str
    received_at: float
    content: bytes = b""  # from the history row (pruned with it: then empty)
    # Sent by this node: the aggregate state over the copies to every member (else None).
    state: DeliveryState | None = None


@dataclass(frozen=True, slots=True)
class GroupCarrier:
    """One payload handed to the core for one member, kept until its end-to-end outcome.
    Times are unix seconds; ``message_id`` is the group message it carries (DATA), if any."""

    carrier_id: bytes
    dst: NodeAddress
    payload: bytes
    message_id: bytes | None
    created_at: float
    expires_at: float
    state: DeliveryState


@dataclass(frozen=True, slots=True)
class SentTally:
    """Copies of one sent group message: how many, delivered, failed."""

    copies: int
    delivered: int
    failed: int

    @property
    def done(self) -> bool:
        return self.delivered + self.failed >= self.copies


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
                out.append(self._load(bytes(gid), bytes(blob)))
            except StoreError as exc:
                bad.append(f"group {bytes(gid).hex()}: {exc}")
        return out, bad

    def _load(self, gid: bytes, blob: bytes) -> GroupState:
        if not blob.startswith(MAGIC):  # format 1 (JSON, log inside): rewritten at next save
            return GroupState.from_bytes(blob)
        state, has_log = decode_state(blob)
        if not has_log:
            for (entry,) in self._store._read(
                "SELECT entry FROM group_log WHERE group_id=? ORDER BY epoch", (gid,)
            ):
                item = decode_entry(bytes(entry))
                state.log[item.epoch] = item
        return state

    def save(self, state: GroupState, *, now: float) -> None:
        """The state without its log (format 2), and only the log entries that changed:
        a 256-member group wrote ~415 KB of JSON per change before (docs/groups.md)."""
        gid = state.group_id
        self._w(
            "INSERT OR REPLACE INTO group_states (group_id, state, updated_at) VALUES (?, ?, ?)",
            (gid, encode_state(state, log=False), now),
        )
        stored = {
            int(e): bytes(c)
            for e, c in self._store._read(
                "SELECT epoch, commit_id FROM group_log WHERE group_id=?", (gid,)
            )
        }
        for epoch in stored.keys() - state.log.keys():  # trimmed, or dropped by a rollback
            self._w("DELETE FROM group_log WHERE group_id=? AND epoch=?", (gid, epoch))
        for epoch, entry in state.log.items():
            if stored.get(epoch) != entry.commit_id:
                self._w("INSERT OR REPLACE INTO group_log VALUES (?, ?, ?, ?)",
                        (gid, epoch, entry.commit_id, encode_entry(entry)))  # fmt: skip

    def delete(self, group_id: bytes) -> None:
        self._w("DELETE FROM group_states WHERE group_id=?", (group_id,))
        self._w("DELETE FROM group_log WHERE group_id=?", (group_id,))

    def add_message(self, row: GroupMessageRow) -> None:
        self._w(
            "INSERT OR IGNORE INTO group_messages VALUES (?, ?, ?, ?, ?)",
            (row.sender.raw, row.message_id, row.group_id, row.app_id, row.received_at),
        )

    def messages(self, group_id: bytes, app_id: str, *, limit: int) -> list[GroupMessageRow]:
        """The app's messages in the group (received, and sent by this node: sender is
        this node), newest first, with their content and, for sent ones, their state."""
        rows = self._store._read(
            "SELECT g.sender, g.message_id, g.group_id, g.app_id, g.received_at, h.payload, "
            "h.direction, h.state FROM group_messages g LEFT JOIN history h "
            "ON h.peer = g.sender AND h.message_id = g.message_id "
            "WHERE g.group_id=? AND g.app_id=? ORDER BY g.received_at DESC LIMIT ?",
            (group_id, app_id, limit),
        )
        out = []
        for s, m, g, a, t, p, d, st in rows:
            state = DeliveryState(st) if d == "outgoing" and st is not None else None
            out.append(GroupMessageRow(NodeAddress(bytes(s)), bytes(m), bytes(g), str(a),
                                       float(t), bytes(p or b""), state))  # fmt: skip
        return out

    # --- durable sends (schema migration 5) ------------------------------------------
    def add_carriers(self, carriers: list[GroupCarrier]) -> None:
        """Keep payloads handed to the core (one payload row per distinct payload: a
        fan-out stores its ciphertext once)."""
        digests: dict[bytes, bytes] = {}  # payload -> its digest (a fan-out: one payload)
        for c in carriers:
            digest = digests.get(c.payload)
            if digest is None:
                digest = digests[c.payload] = hashlib.sha256(c.payload).digest()
                self._w("INSERT OR IGNORE INTO group_payloads VALUES (?, ?)", (digest, c.payload))
            self._w(
                "INSERT OR REPLACE INTO group_outbox VALUES (?, ?, ?, ?, ?, ?, ?)",
                (c.carrier_id, c.dst.raw, digest, c.message_id, c.created_at, c.expires_at,
                 c.state.value),
            )  # fmt: skip

    def carriers(self) -> tuple[list[GroupCarrier], list[str]]:
        """Every kept carrier, oldest first, and a line per unreadable row (left in place)."""
        out: list[GroupCarrier] = []
        bad: list[str] = []
        for cid, dst, mid, created, expires, state, payload in self._store._read(
            "SELECT o.carrier_id, o.dst, o.message_id, o.created_at, o.expires_at, o.state, "
            "p.payload FROM group_outbox o LEFT JOIN group_payloads p ON p.digest = o.digest "
            "ORDER BY o.created_at"
        ):
            try:
                if payload is None:
                    raise StoreError("its payload row is missing")
                out.append(GroupCarrier(bytes(cid), NodeAddress(bytes(dst)), bytes(payload),
                                        None if mid is None else bytes(mid), float(created),
                                        float(expires), DeliveryState(state)))  # fmt: skip
            except (MeshdError, ValueError, TypeError) as exc:
                bad.append(f"group carrier {bytes(cid).hex()}: {exc}")
        return out, bad

    def carrier_state(self, carrier_id: bytes, state: DeliveryState) -> None:
        """Only the state a restore needs (held by a custodian: probe, do not resend)."""
        self._w("UPDATE group_outbox SET state=? WHERE carrier_id=?", (state.value, carrier_id))

    def carrier_done(self, carrier_id: bytes) -> None:
        self._w("DELETE FROM group_outbox WHERE carrier_id=?", (carrier_id,))

    def prune_payloads(self) -> None:
        """Drop payloads no carrier names any more (after their last copy's outcome)."""
        self._w(
            "DELETE FROM group_payloads WHERE digest NOT IN (SELECT digest FROM group_outbox)"
        )

    def add_sent(self, message_id: bytes, sender: NodeAddress, group_id: bytes, app_id: str,
                 copies: int, *, now: float) -> None:  # fmt: skip
        """A group message this node sent, and how many copies left for members."""
        self._w("INSERT OR IGNORE INTO group_messages VALUES (?, ?, ?, ?, ?)",
                (sender.raw, message_id, group_id, app_id, now))  # fmt: skip
        if copies:
            self._w("INSERT OR REPLACE INTO group_sent VALUES (?, ?, 0, 0)", (message_id, copies))

    def tally(self, message_id: bytes, *, delivered: bool) -> SentTally | None:
        """Count one copy's outcome; the new tally (None: not a message we track)."""
        col = "delivered" if delivered else "failed"
        self._w(f"UPDATE group_sent SET {col} = {col} + 1 WHERE message_id=?", (message_id,))
        rows = self._store._read(
            "SELECT copies, delivered, failed FROM group_sent WHERE message_id=?", (message_id,)
        )
        if not rows:
            return None
        tally = SentTally(int(rows[0][0]), int(rows[0][1]), int(rows[0][2]))
        if tally.done:
            self._w("DELETE FROM group_sent WHERE message_id=?", (message_id,))
        return tally
