"""The ``e2e_*`` tables: 1:1 sessions, messages waiting for one, sealed carriers, requests.

Writes go through the ``Store``'s lazy transaction, so they commit with the node's next
group commit (a message an app was told is accepted is in ``e2e_pending`` or
``e2e_sealed`` in the same transaction as its history row). The MLS state itself lives in
the engine's own database; it is written before any of this (see meshd/e2e/sessions.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshd.address import NodeAddress
from meshd.errors import MeshdError, StoreError
from meshd.store.store import Store


@dataclass(frozen=True, slots=True)
class SessionRow:
    peer: NodeAddress
    group_id: bytes
    confirmed: bool  # the peer is known to be in the group (else the Welcome travels along)
    welcome: bytes | None
    created_at: float


@dataclass(frozen=True, slots=True)
class PendingRow:
    message_id: bytes
    peer: NodeAddress
    created_at: float
    expires_at: float
    flags: int


@dataclass(frozen=True, slots=True)
class SealedRow:
    carrier_id: bytes  # the core message id the ciphertext travels under
    message_id: bytes  # the app's message id (history)
    peer: NodeAddress
    group_id: bytes
    payload: bytes
    created_at: float
    expires_at: float
    done: bool


@dataclass(frozen=True, slots=True)
class RequestRow:
    peer: NodeAddress
    direction: str  # "incoming" | "outgoing"
    group_id: bytes | None
    app_id: str
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class HeldRow:
    id: int
    peer: NodeAddress
    payload: bytes
    hops: int
    received_at: float


class SessionTables:
    """Typed access to the e2e tables of one node's store (event-loop thread only)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _w(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        return int(self._store._write(sql, params).rowcount)

    def _r(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self._store._read(sql, params)

    # --- sessions and groups ----------------------------------------------------------
    def sessions(self) -> list[SessionRow]:
        rows = self._r("SELECT peer, group_id, confirmed, welcome, created_at FROM e2e_sessions")
        return [_guard(_session, row) for row in rows]

    def put_session(self, s: SessionRow) -> None:
        self._w(
            "INSERT OR REPLACE INTO e2e_sessions VALUES (?, ?, ?, ?, ?)",
            (s.peer.raw, s.group_id, int(s.confirmed), s.welcome, s.created_at),
        )

    def delete_session(self, peer: NodeAddress) -> None:
        self._w("DELETE FROM e2e_sessions WHERE peer = ?", (peer.raw,))

    def groups(self) -> dict[bytes, NodeAddress]:
        rows = self._r("SELECT group_id, peer FROM e2e_groups")
        return {bytes(r[0]): NodeAddress(bytes(r[1])) for r in rows}

    def put_group(self, group_id: bytes, peer: NodeAddress, *, now: float) -> None:
        self._w("INSERT OR REPLACE INTO e2e_groups VALUES (?, ?, ?)", (group_id, peer.raw, now))

    def delete_group(self, group_id: bytes) -> None:
        self._w("DELETE FROM e2e_groups WHERE group_id = ?", (group_id,))

    # --- messages waiting for a session -------------------------------------------------
    def add_pending(self, p: PendingRow) -> None:
        self._w(
            "INSERT OR REPLACE INTO e2e_pending VALUES (?, ?, ?, ?, ?)",
            (p.message_id, p.peer.raw, p.created_at, p.expires_at, p.flags),
        )

    def pending(self, peer: NodeAddress | None = None) -> list[PendingRow]:
        sql = "SELECT message_id, peer, created_at, expires_at, flags FROM e2e_pending"
        params: tuple[Any, ...] = ()
        if peer is not None:
            sql += " WHERE peer = ?"
            params = (peer.raw,)
        rows = self._r(sql + " ORDER BY created_at", params)
        return [_guard(_pending, row) for row in rows]

    def pending_count(self) -> int:
        return int(self._r("SELECT count(*) FROM e2e_pending")[0][0])

    def delete_pending(self, message_id: bytes) -> None:
        self._w("DELETE FROM e2e_pending WHERE message_id = ?", (message_id,))

    def outgoing_content(self, message_id: bytes) -> tuple[str, bytes] | None:
        """The app id and plaintext of one of our outgoing messages (its history row)."""
        rows = self._r(
            "SELECT app_id, payload FROM history WHERE message_id = ? AND direction = "
            "'outgoing' LIMIT 1",
            (message_id,),
        )
        return (str(rows[0][0]), bytes(rows[0][1])) if rows else None

    # --- sealed carriers ----------------------------------------------------------------
    def add_sealed(self, s: SealedRow) -> None:
        self._w(
            "INSERT OR REPLACE INTO e2e_sealed VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (s.carrier_id, s.message_id, s.peer.raw, s.group_id, s.payload, s.created_at,
             s.expires_at, int(s.done)),
        )  # fmt: skip

    def sealed(self, carrier_id: bytes) -> SealedRow | None:
        rows = self._r(f"SELECT {_SEALED} FROM e2e_sealed WHERE carrier_id = ?", (carrier_id,))
        return _guard(_sealed, rows[0]) if rows else None

    def sealed_in_group(self, group_id: bytes) -> list[SealedRow]:
        rows = self._r(
            f"SELECT {_SEALED} FROM e2e_sealed WHERE group_id = ? ORDER BY created_at",
            (group_id,),
        )
        return [_guard(_sealed, row) for row in rows]

    def open_sealed(self) -> list[SealedRow]:
        rows = self._r(f"SELECT {_SEALED} FROM e2e_sealed WHERE done = 0 ORDER BY created_at")
        return [_guard(_sealed, row) for row in rows]

    def sealed_done(self, carrier_id: bytes) -> None:
        self._w("UPDATE e2e_sealed SET done = 1 WHERE carrier_id = ?", (carrier_id,))

    def delete_sealed(self, carrier_id: bytes) -> None:
        self._w("DELETE FROM e2e_sealed WHERE carrier_id = ?", (carrier_id,))

    def prune_sealed(self, *, before: float) -> int:
        """Forget finished carriers created before ``before`` (kept a while for RESET):
        re-sends marked done, and first carriers whose message left the outbox."""
        n = self._w(
            "DELETE FROM e2e_sealed WHERE created_at < ? AND (done = 1 OR (carrier_id = "
            "message_id AND carrier_id NOT IN (SELECT message_id FROM outbox)))",
            (before,),
        )
        if n:
            self._w("DELETE FROM e2e_batch WHERE carrier_id NOT IN "
                    "(SELECT carrier_id FROM e2e_sealed)")  # fmt: skip
        return n

    # --- coalesced carriers (meshd/e2e/coalesce.py) --------------------------------------
    def add_batch(self, carrier_id: bytes, members: list[bytes]) -> None:
        """``members``: the app messages after the first riding in ``carrier_id``."""
        for m in members:
            self._w("INSERT OR IGNORE INTO e2e_batch VALUES (?, ?)", (carrier_id, m))

    def delete_batch(self, carrier_id: bytes) -> None:
        self._w("DELETE FROM e2e_batch WHERE carrier_id = ?", (carrier_id,))

    def batch_members(self, carrier_id: bytes) -> list[bytes]:
        rows = self._r("SELECT message_id FROM e2e_batch WHERE carrier_id = ?", (carrier_id,))
        return [bytes(r[0]) for r in rows]

    def batches(self) -> dict[bytes, list[bytes]]:
        """Every coalesced carrier's members after the first (restore)."""
        out: dict[bytes, list[bytes]] = {}
        for r in self._r("SELECT carrier_id, message_id FROM e2e_batch"):
            out.setdefault(bytes(r[0]), []).append(bytes(r[1]))
        return out

    # --- accept list, policy ------------------------------------------------------------
    def accepted(self) -> set[NodeAddress]:
        rows = self._r("SELECT peer FROM e2e_peers WHERE accepted = 1")
        return {NodeAddress(bytes(r[0])) for r in rows}

    def set_accepted(self, peer: NodeAddress, accepted: bool, *, now: float) -> None:
        self._w(
            "INSERT OR REPLACE INTO e2e_peers VALUES (?, ?, ?)", (peer.raw, int(accepted), now)
        )

    def setting(self, name: str) -> str | None:
        rows = self._r("SELECT value FROM e2e_settings WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    def set_setting(self, name: str, value: str) -> None:
        self._w("INSERT OR REPLACE INTO e2e_settings VALUES (?, ?)", (name, value))

    def settings_prefixed(self, prefix: str) -> dict[str, str]:
        """Every setting whose name starts with ``prefix`` (``prefix`` has no % or _)."""
        rows = self._r("SELECT name, value FROM e2e_settings WHERE substr(name, 1, ?) = ?",
                       (len(prefix), prefix))  # fmt: skip
        return {str(r[0]): str(r[1]) for r in rows}

    def delete_setting(self, name: str) -> None:
        self._w("DELETE FROM e2e_settings WHERE name = ?", (name,))

    # --- connection requests -----------------------------------------------------------
    def requests(self, direction: str | None = None) -> list[RequestRow]:
        sql = "SELECT peer, direction, group_id, app_id, created_at, expires_at FROM e2e_requests"
        params: tuple[Any, ...] = ()
        if direction is not None:
            sql += " WHERE direction = ?"
            params = (direction,)
        rows = self._r(sql + " ORDER BY created_at", params)
        return [_guard(_request, row) for row in rows]

    def put_request(self, r: RequestRow) -> None:
        self._w(
            "INSERT OR REPLACE INTO e2e_requests VALUES (?, ?, ?, ?, ?, ?)",
            (r.peer.raw, r.direction, r.group_id, r.app_id, r.created_at, r.expires_at),
        )

    def delete_request(self, peer: NodeAddress, direction: str) -> None:
        self._w(
            "DELETE FROM e2e_requests WHERE peer = ? AND direction = ?", (peer.raw, direction)
        )

    def hold(self, peer: NodeAddress, payload: bytes, *, hops: int, now: float) -> None:
        self._w(
            "INSERT INTO e2e_held (peer, payload, hops, received_at) VALUES (?, ?, ?, ?)",
            (peer.raw, payload, hops, now),
        )

    def held(self, peer: NodeAddress) -> list[HeldRow]:
        rows = self._r(
            "SELECT id, peer, payload, hops, received_at FROM e2e_held WHERE peer = ? "
            "ORDER BY id",
            (peer.raw,),
        )
        return [HeldRow(int(r[0]), NodeAddress(bytes(r[1])), bytes(r[2]), int(r[3]),
                        float(r[4])) for r in rows]  # fmt: skip

    def held_count(self, peer: NodeAddress) -> int:
        return int(self._r("SELECT count(*) FROM e2e_held WHERE peer = ?", (peer.raw,))[0][0])

    def drop_held(self, peer: NodeAddress) -> None:
        self._w("DELETE FROM e2e_held WHERE peer = ?", (peer.raw,))


_SEALED = "carrier_id, message_id, peer, group_id, payload, created_at, expires_at, done"


def _guard(fn: Any, row: Any) -> Any:
    try:
        return fn(row)
    except (MeshdError, ValueError, TypeError) as exc:
        raise StoreError(f"e2e row {row[0]!r}: {exc}") from exc


def _session(r: Any) -> SessionRow:
    welcome = None if r[3] is None else bytes(r[3])
    return SessionRow(NodeAddress(bytes(r[0])), bytes(r[1]), bool(r[2]), welcome, float(r[4]))


def _pending(r: Any) -> PendingRow:
    return PendingRow(bytes(r[0]), NodeAddress(bytes(r[1])), float(r[2]), float(r[3]), int(r[4]))


def _sealed(r: Any) -> SealedRow:
    return SealedRow(bytes(r[0]), bytes(r[1]), NodeAddress(bytes(r[2])), bytes(r[3]),
                     bytes(r[4]), float(r[5]), float(r[6]), bool(r[7]))  # fmt: skip


def _request(r: Any) -> RequestRow:
    gid = None if r[2] is None else bytes(r[2])
    return RequestRow(NodeAddress(bytes(r[0])), str(r[1]), gid, str(r[3]), float(r[4]),
                      float(r[5]))  # fmt: skip
