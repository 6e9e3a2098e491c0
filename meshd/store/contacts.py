"""The ``contacts`` table: TOFU pins, petnames, verified flags (policy in meshd.crypto.tofu).

Writes go through the ``Store``'s lazy transaction, so they commit with the node's next
group commit like everything else. A bounded in-memory cache saves the SELECT per
learned identity (the router reports each identity once, but a node hears many).
"""

from __future__ import annotations

from typing import Any

from meshd.address import NodeAddress
from meshd.crypto import tofu
from meshd.crypto.identity import PublicIdentity
from meshd.errors import MeshdError, NotFound, StoreError
from meshd.store.store import Store

_CACHE = 4096
_COLS = (
    "address, signing_key, exchange_key, pending_exchange_key, key_changed_at, name, "
    "verified, first_seen, last_seen"
)


class ContactBook:
    """Typed access to the contacts table of one node's store (event-loop thread only)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: dict[bytes, tofu.Contact | None] = {}

    def get(self, address: NodeAddress) -> tofu.Contact | None:
        if address.raw in self._cache:
            return self._cache[address.raw]
        # Store._read/_write: the store's own error mapping and lazy transaction.
        rows = self._store._read(f"SELECT {_COLS} FROM contacts WHERE address = ?",
                                 (address.raw,))  # fmt: skip
        contact = _contact(rows[0]) if rows else None
        self._remember(address.raw, contact)
        return contact

    def require(self, address: NodeAddress) -> tofu.Contact:
        contact = self.get(address)
        if contact is None:
            raise NotFound(f"no contact {address.text}: this node has not seen it",
                           field="address")  # fmt: skip
        return contact

    def list(self) -> list[tofu.Contact]:
        rows = self._store._read(f"SELECT {_COLS} FROM contacts ORDER BY name = '', name, "
                                 "last_seen DESC")  # fmt: skip
        return [_contact(row) for row in rows]

    def observe(
        self, address: NodeAddress, seen: PublicIdentity, *, now: float
    ) -> tofu.Observation:
        """Apply the TOFU policy to a learned identity and store the outcome."""
        obs = tofu.observe(self.get(address), address, seen, now=now)
        if obs.contact is not None and obs.verdict is not tofu.Verdict.SAME:
            self.put(obs.contact)
        # SAME: last_seen is not rewritten on every sighting (the peers table has it);
        # a write per learned identity was measurable on busy meshes.
        return obs

    def put(self, c: tofu.Contact) -> None:
        self._store._write(
            f"INSERT OR REPLACE INTO contacts ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                c.address.raw, c.signing_key, c.exchange_key, c.pending_exchange_key,
                c.key_changed_at, c.name, int(c.verified), c.first_seen, c.last_seen,
            ),
        )  # fmt: skip
        self._remember(c.address.raw, c)

    def _remember(self, key: bytes, contact: tofu.Contact | None) -> None:
        if len(self._cache) >= _CACHE and key not in self._cache:
            self._cache.clear()
        self._cache[key] = contact


def _contact(row: Any) -> tofu.Contact:
    try:
        identity = PublicIdentity(bytes(row[1]), bytes(row[2]))
        if identity.address.raw != bytes(row[0]):
            raise StoreError("address does not match its signing key")
        pending = None if row[3] is None else bytes(row[3])
        if pending is not None and len(pending) != len(identity.exchange_key):
            raise StoreError("pending exchange key is not 32 bytes")
        return tofu.Contact(
            address=identity.address,
            signing_key=identity.signing_key,
            exchange_key=identity.exchange_key,
            pending_exchange_key=pending,
            key_changed_at=None if row[4] is None else float(row[4]),
            name=str(row[5]),
            verified=bool(row[6]),
            first_seen=float(row[7]),
            last_seen=float(row[8]),
        )
    except MeshdError as exc:
        raise StoreError(f"contacts row {bytes(row[0]).hex()}: {exc}") from exc
