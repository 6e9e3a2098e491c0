"""Own announce (built and signed lazily, once per sequence number) and the cache of
verified peer identities (each announce signature is checked once per sequence number)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity, PublicIdentity
from meshd.errors import FrameDecodeError, SignatureError
from meshd.router.bodies import (
    ANNOUNCE_CONTEXT,
    BATTERY_UNKNOWN,
    MAX_NEIGHBOURS_LISTED,
    Announce,
    decode_announce,
)

CAP_RELAY = 0x0001  # willing to relay
CAP_CUSTODY = 0x0002  # takes custody of frames for unreachable destinations


class OwnAnnounce:
    """What this node says about itself; re-signed only when something changed."""

    def __init__(self, identity: Identity, *, capabilities: int = CAP_RELAY | CAP_CUSTODY) -> None:
        self._identity = identity
        self.seq = 0
        self.battery: int = BATTERY_UNKNOWN
        self.charging = False
        self.cluster_id = 0
        self.capabilities = capabilities
        self.extensions = b""
        self.neighbours: tuple[bytes, ...] = ()
        self._cached: tuple[int, bytes] | None = None
        self._dirty = True

    def update(self, **changes: object) -> None:
        for name, value in changes.items():
            if getattr(self, name) != value:
                setattr(self, name, value)
                self._dirty = True

    def bump(self) -> int:
        """New sequence number (AODV §6.1: before a path request). The signed announce is
        not re-signed for it: its (older) number stays valid until a reply needs newer."""
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return self.seq

    def encoded(self, *, min_seq: int | None = None) -> bytes:
        """The signed announce; re-signed when a field changed or it is older than
        ``min_seq`` (a path reply must carry a number at least as new as requested)."""
        stale = (
            min_seq is not None
            and self._cached is not None
            and _newer(min_seq, self._cached[0])
        )
        if stale:
            assert min_seq is not None
            if _newer(min_seq, self.seq):
                self.seq = min_seq
        if self._dirty or self._cached is None or stale:
            if self._cached is not None and self._cached[0] == self.seq:
                self.seq = (self.seq + 1) & 0xFFFFFFFF
            neighbours = self.neighbours[:MAX_NEIGHBOURS_LISTED]
            unsigned = Announce(
                signing_key=self._identity.public.signing_key,
                exchange_key=self._identity.public.exchange_key,
                seq=self.seq,
                battery=self.battery,
                charging=self.charging,
                degree=min(255, len(self.neighbours)),
                cluster_id=self.cluster_id,
                capabilities=self.capabilities,
                neighbours=neighbours,
                extensions=self.extensions,
                signature=b"",
            )
            signature = self._identity.sign(ANNOUNCE_CONTEXT + unsigned.signed_part())
            body = unsigned.signed_part() + signature
            self._cached = (self.seq, body)
            self._dirty = False
        return self._cached[1]


@dataclass(slots=True)
class PeerRecord:
    identity: PublicIdentity
    announce: Announce
    body: bytes  # the signed announce as received (forwarded in path replies)


class IdentityCache:
    """Verified announces by address, LRU-bounded; verification is skipped for bytes already
    verified (the same announce arrives from every neighbour and in every path reply)."""

    def __init__(self, *, capacity: int = 8192) -> None:
        self.capacity = capacity
        self._peers: OrderedDict[NodeAddress, PeerRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, address: NodeAddress) -> PeerRecord | None:
        return self._peers.get(address)

    def pin(self, identity: PublicIdentity) -> None:
        """An identity proven by a link handshake (no announce yet)."""
        if identity.address not in self._peers:
            empty = Announce(identity.signing_key, identity.exchange_key, 0, BATTERY_UNKNOWN,
                             False, 0, 0, 0, (), b"", b"")
            self._store(identity.address, PeerRecord(identity, empty, b""))

    def accept(self, body: bytes, *, claimed: NodeAddress) -> tuple[PeerRecord, bool]:
        """Decode and verify an announce claimed to come from ``claimed``.

        Returns (record, new_info): ``new_info`` is True when the announce is fresher than
        what we had. Raises FrameDecodeError (malformed) or SignatureError (forged).
        """
        known = self._peers.get(claimed)
        if known is not None and known.body == body:
            self._peers.move_to_end(claimed)
            return known, False
        announce = decode_announce(body)
        if announce.address != claimed:
            raise SignatureError("announce key does not match the source address", field="src")
        if not announce.verify():
            raise SignatureError("bad announce signature", field="signature")
        if known is not None and known.body and not _newer(announce.seq, known.announce.seq):
            # Genuine but not newer than what we hold (an older copy, e.g. in a path reply).
            return known, False
        record = PeerRecord(announce.identity, announce, body)
        self._store(claimed, record)
        return record, True

    def _store(self, address: NodeAddress, record: PeerRecord) -> None:
        self._peers[address] = record
        self._peers.move_to_end(address)
        while len(self._peers) > self.capacity:
            self._peers.popitem(last=False)


def _newer(a: int, b: int) -> bool:
    return a != b and ((a - b) & 0xFFFFFFFF) < 0x80000000


__all__ = ["FrameDecodeError", "IdentityCache", "OwnAnnounce", "PeerRecord"]
