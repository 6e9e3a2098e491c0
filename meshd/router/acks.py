"""End-to-end ACKs a destination owes, batched per sender until the node drains the core.

A destination used to sign one ACK per message and its sender verify it: Ed25519 was
~30 us to sign and ~70 us to verify per message, plus one more frame per message to seal,
route and open on every hop (profiled at ~800 msg/s: the largest single cost on the
sending daemon's core). Held until ``MeshCore.frames_to_send`` (the node drains after its
store commit, once per event-loop pass), the messages of one sender received in a pass
share one signed batch ACK (body version 2, docs/wire-format.md). A lone message still
gets a version-1 ACK, which older nodes understand. Sans-IO: no clock, no I/O.
"""

from __future__ import annotations

import random

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity
from meshd.router.e2e_bodies import (
    MAX_ACK_BATCH,
    AckBatchBody,
    AckBody,
    AckEntry,
    ack_batch_signed_part,
    ack_signed_part,
)
from meshd.router.e2e_common import Delivered
from meshd.router.frames import FRAME_ID_LEN, Frame, FrameType

_Owed = tuple[bytes, int, Delivered]  # message id, echoed attempt, its dedup record


def single_ack(identity: Identity, rng: random.Random, *, message_id: bytes, attempt: int,
               record: Delivered, sender: NodeAddress, ttl: int) -> Frame:  # fmt: skip
    """A version-1 ACK of one message (its signature cached on the dedup record)."""
    if record.ack_signature is None:
        signed = ack_signed_part(message_id, sender, identity.address, record.digest)
        record.ack_signature = identity.sign(signed)
    body = AckBody(message_id, attempt, identity.public.signing_key, record.ack_signature)
    return Frame(FrameType.ACK, rng.randbytes(FRAME_ID_LEN), identity.address, sender,
                 body.encode(), ttl=ttl)  # fmt: skip


class AckQueue:
    """ACKs owed since the last ``frames()``, by sender, in arrival order."""

    def __init__(self, identity: Identity, rng: random.Random) -> None:
        self._identity = identity
        self._rng = rng
        self._owed: dict[NodeAddress, list[_Owed]] = {}

    def __bool__(self) -> bool:
        return bool(self._owed)

    def add(self, sender: NodeAddress, message_id: bytes, attempt: int, record: Delivered) -> None:
        self._owed.setdefault(sender, []).append((message_id, attempt, record))

    def frames(self, *, ttl: int) -> list[Frame]:
        """One ACK frame per sender (per MAX_ACK_BATCH messages); empties the queue."""
        owed, self._owed = self._owed, {}
        out: list[Frame] = []
        for sender, items in owed.items():
            for i in range(0, len(items), MAX_ACK_BATCH):
                chunk = items[i : i + MAX_ACK_BATCH]
                if len(chunk) == 1:
                    mid, attempt, record = chunk[0]
                    out.append(single_ack(self._identity, self._rng, message_id=mid,
                                          attempt=attempt, record=record, sender=sender,
                                          ttl=ttl))  # fmt: skip
                else:
                    out.append(self._batch(sender, chunk, ttl))
        return out

    def _batch(self, sender: NodeAddress, chunk: list[_Owed], ttl: int) -> Frame:
        identity = self._identity
        entries = tuple(AckEntry(mid, attempt, record.digest) for mid, attempt, record in chunk)
        signature = identity.sign(ack_batch_signed_part(sender, identity.address, entries))
        body = AckBatchBody(entries, identity.public.signing_key, signature)
        return Frame(FrameType.ACK, self._rng.randbytes(FRAME_ID_LEN), identity.address,
                     sender, body.encode(), ttl=ttl)  # fmt: skip
