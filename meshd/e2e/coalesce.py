"""Coalescing 1:1 app messages per peer into one MLS message (issue 3, throughput).

Every MLS application message costs an Ed25519 signature by the sender and a verification
by the receiver (RFC 9420 §6.1) plus the AEAD: measured ~250 us to seal and ~310 us to
open per message, and each also costs a core message (end-to-end ACK, hop-by-hop frames,
history of the carrier). So the node queues the app messages accepted for a peer that has
a session, and in its next pump pass, right before the commit that releases them, seals
what is queued for the same peer as ONE ``BATCH`` record (``session_wire.encode_batch``)
under one core message, the *carrier*. Nagle-like but never waiting: only what is already
queued goes together; a lone message is sealed alone (type APP), exactly as before, so
latency at low load is unchanged.

Each app message keeps its own message id (the receiver's dedup key), history row and
delivery state: the carrier's id is the first message's id, the others are recorded in
``e2e_batch`` (same transaction as the sealed carrier) and get every state the carrier
gets (``meshd/node_sessions.py``), also after a restart. Sans-IO: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from meshd.address import NodeAddress
from meshd.e2e import session_wire as sw
from meshd.e2e.sessions import SessionManager
from meshd.envelope import Envelope
from meshd.errors import InvalidArgument
from meshd.router.e2e_bodies import MAX_PAYLOAD_LEN
from meshd.store.sessions import SealedRow, SessionRow

#: App messages per carrier. 64 = the send window (meshd/sendwindow.py): more are never
#: in flight to one destination anyway.
MAX_RECORDS = 64
#: Plaintext bytes per carrier. Measured: a 61 KiB batch (MAX_PAYLOAD_LEN - 4096) sealed
#: to 65,617 B, past the core's 65,467 B limit; 32 KiB keeps well below it (the node
#: still halves a batch the core refuses as too large). 16 KiB fitted only 15 messages of
#: 1 KiB with their record headers: 16 unary callers paid a second MLS message per commit.
MAX_BATCH_BYTES = min(32 * 1024, MAX_PAYLOAD_LEN - 4096)
#: Messages whose expiry differs by more go in different carriers (a carrier has one
#: lifetime in the core).
EXPIRY_SLACK_S = 1.0
_RECORD_OVERHEAD = sw.MESSAGE_ID_LEN + 2


@dataclass(frozen=True, slots=True)
class Queued:
    """An accepted app message waiting for the pump pass that seals it."""

    message_id: bytes
    envelope: Envelope
    expires_at: float  # unix seconds


class Coalescer:
    """Per destination, the app messages queued since the last pump pass, in order."""

    def __init__(self, *, max_records: int = MAX_RECORDS,
                 max_bytes: int = MAX_BATCH_BYTES) -> None:  # fmt: skip
        if not 1 <= max_records <= sw.MAX_BATCH:
            raise InvalidArgument(f"max_records must be 1..{sw.MAX_BATCH}", field="max_records")
        if max_bytes < 1:
            raise InvalidArgument("max_bytes must be positive", field="max_bytes")
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._queued: dict[NodeAddress, list[Queued]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, dst: object) -> bool:
        return dst in self._queued

    def add(self, dst: NodeAddress, item: Queued) -> None:
        self._queued.setdefault(dst, []).append(item)
        self._count += 1

    def take(self) -> Iterator[tuple[NodeAddress, list[Queued]]]:
        """Everything queued, as (dst, batch) in arrival order per destination; a batch
        is bounded by ``max_records``, ``max_bytes`` and ``EXPIRY_SLACK_S``."""
        queued, self._queued, self._count = self._queued, {}, 0
        for dst, items in queued.items():
            batch: list[Queued] = []
            size = 0
            for item in items:
                n = len(item.envelope.encode()) + _RECORD_OVERHEAD
                if batch and (
                    len(batch) >= self.max_records
                    or size + n > self.max_bytes
                    or abs(item.expires_at - batch[0].expires_at) > EXPIRY_SLACK_S
                ):
                    yield dst, batch
                    batch, size = [], 0
                batch.append(item)
                size += n
            if batch:
                yield dst, batch


def seal_batch(
    mgr: SessionManager, s: SessionRow, items: list[Queued], *, now: float
) -> tuple[bytes, float]:
    """(payload, expires_at) of the carrier of ``items`` in session ``s``; its id is
    ``items[0].message_id``. One item: the plain APP record (as ``seal_or_queue``)."""
    if not items:
        raise InvalidArgument("nothing to seal", field="items")
    first = items[0]
    expires_at = max(q.expires_at for q in items)
    if len(items) == 1:
        payload = mgr.seal_or_queue(s.peer, first.envelope, first.message_id, now=now,
                                    expires_at=first.expires_at)  # fmt: skip
        assert payload is not None  # the session exists
        return payload, expires_at
    plaintext = sw.encode_batch([(q.message_id, q.envelope) for q in items])
    ciphertext = mgr.engine.encrypt(s.group_id, plaintext)  # saved before frames leave
    payload = mgr.frame(s, ciphertext, mgr.flags_for(s))
    carrier = first.message_id
    mgr.tables.add_sealed(
        SealedRow(carrier, carrier, s.peer, s.group_id, payload, now, expires_at, False)
    )
    mgr.tables.add_batch(carrier, [q.message_id for q in items[1:]])
    return payload, expires_at
