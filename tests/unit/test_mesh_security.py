"""Tampered frames, forged announces and forged path replies are rejected."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.address import BROADCAST, NodeAddress
from meshd.crypto.identity import Identity
from meshd.router.announce import OwnAnnounce
from meshd.router.bodies import (
    Announce,
    PathReply,
    decode_announce,
)
from meshd.router.core import MeshCore
from meshd.router.events import CoreEvent, FrameRejected, PathChanged, PeerIdentityLearned
from meshd.router.frames import Frame, FrameType
from meshd.testing.memlink import MemFabric, build_mesh, identity_for

ATTACKER = Identity.from_seed(bytes([9]) * 64)
VICTIM = identity_for(99, seed=42)  # a node that is not in the mesh


def pair() -> tuple[MemFabric, list[MeshCore], int]:
    """Nodes 0 and 1 linked; returns node 0's link id towards node 1."""
    fabric, cores = build_mesh(2, [], seed=7)
    link_on_0, _ = fabric.connect(0, 1)
    fabric.run_for(1.0)
    fabric.events[0].clear()
    return fabric, cores, link_on_0


def feed(fabric: MemFabric, core: MeshCore, link_id: int, data: bytes) -> list[CoreEvent]:
    before = len(fabric.events[0])
    core.receive(link_id, data, now=fabric.now)
    fabric.kick(0)
    return fabric.events[0][before:]


def rejected(events: list[CoreEvent]) -> list[str]:
    return [e.reason for e in events if isinstance(e, FrameRejected)]


def announce_body(identity: Identity, *, seq: int = 5, battery: int = 90) -> bytes:
    own = OwnAnnounce(identity)
    own.update(battery=battery)
    own.seq = seq
    return own.encoded()


def test_malformed_and_tampered_frames_are_rejected_without_raising() -> None:
    fabric, cores, link = pair()
    good = Frame(FrameType.DATA, b"12345678", cores[1].address, cores[0].address, b"x").encode()
    tampered = [
        b"",
        b"\x01",
        good[:20],  # truncated header
        b"\x02" + good[1:],  # unknown version
        good[:1] + b"\x33" + good[2:],  # unknown type
        good[:2] + b"\x80" + good[3:],  # unknown flag bit
        b"\x01\x40\x05" + bytes(9),  # LINK_ACK whose count lies
    ]
    for data in tampered:
        reasons = rejected(feed(fabric, cores[0], link, data))
        assert len(reasons) == 1 and "malformed" in reasons[0], data
    assert rejected(feed(fabric, cores[0], 12345, good)) == ["frame on an unknown link"]


def test_an_announce_whose_key_does_not_match_its_source_is_rejected() -> None:
    fabric, cores, link = pair()
    # The attacker signs correctly with its own key but claims the victim's address.
    frame = Frame(FrameType.ANNOUNCE, b"a" * 8, VICTIM.address, BROADCAST,
                  announce_body(ATTACKER), ttl=1)
    reasons = rejected(feed(fabric, cores[0], link, frame.encode()))
    assert reasons and "does not match" in reasons[0]
    assert cores[0].public_identity_of(VICTIM.address) is None


def test_an_announce_with_a_bad_signature_is_rejected() -> None:
    fabric, cores, link = pair()
    body = bytearray(announce_body(VICTIM, seq=3))
    body[70] ^= 0x01  # the battery byte, under the signature
    frame = Frame(FrameType.ANNOUNCE, b"b" * 8, VICTIM.address, BROADCAST, bytes(body), ttl=1)
    events = feed(fabric, cores[0], link, frame.encode())
    assert any("bad announce signature" in r for r in rejected(events))
    assert not [e for e in events if isinstance(e, PeerIdentityLearned)]
    # The genuine announce is then accepted and reported once.
    genuine = Frame(FrameType.ANNOUNCE, b"c" * 8, VICTIM.address, BROADCAST,
                    announce_body(VICTIM, seq=4), ttl=1)
    learned = [e for e in feed(fabric, cores[0], link, genuine.encode())
               if isinstance(e, PeerIdentityLearned)]
    assert [e.address for e in learned] == [VICTIM.address]
    assert cores[0].public_identity_of(VICTIM.address) == VICTIM.public


_IDS = random.Random(1)


def _reply_frame(src: NodeAddress, dst: NodeAddress, announce: Announce) -> bytes:
    body = PathReply(16, 900, b"r" * 8, announce).encode()
    return Frame(FrameType.PATH_REPLY, _IDS.randbytes(8), src, dst, body).encode()


def test_forged_path_replies_are_rejected_and_install_no_path() -> None:
    fabric, cores, link = pair()
    me = cores[0].address
    # 1) a reply "from" the victim carrying the attacker's (validly signed) announce
    forged_key = _reply_frame(VICTIM.address, me, decode_announce(announce_body(ATTACKER)))
    # 2) a reply carrying the victim's announce with a field changed after signing
    real = decode_announce(announce_body(VICTIM, seq=8))
    altered = Announce(real.signing_key, real.exchange_key, real.seq + 1, real.battery,
                       real.charging, real.degree, real.cluster_id, real.capabilities,
                       real.neighbours, real.extensions, real.signature)
    forged_sig = _reply_frame(VICTIM.address, me, altered)
    for data in (forged_key, forged_sig):
        events = feed(fabric, cores[0], link, data)
        assert any("forged path reply" in r for r in rejected(events))
        assert not [e for e in events if isinstance(e, PathChanged)]
        assert all(r.dst != VICTIM.address for r in cores[0].routes())
    # The genuine reply (signed by the victim) does install the path.
    genuine = _reply_frame(VICTIM.address, me, decode_announce(announce_body(VICTIM, seq=9)))
    events = feed(fabric, cores[0], link, genuine)
    assert not rejected(events)
    assert any(r.dst == VICTIM.address and r.next_hop == cores[1].address
               for r in cores[0].routes())


def test_a_forged_reply_is_not_relayed() -> None:
    fabric, cores = build_mesh(3, [(0, 1)], seed=8)
    link_1_to_2, _ = fabric.connect(1, 2)
    fabric.run_for(5.0)
    forged = _reply_frame(VICTIM.address, cores[0].address,
                          decode_announce(announce_body(ATTACKER)))
    cores[1].receive(link_1_to_2, forged, now=fabric.now)
    fabric.kick(1)
    fabric.run_for(1.0)
    assert any(isinstance(e, FrameRejected) for e in fabric.events[1])
    assert cores[1].router.stats.tx.get("PATH_REPLY", 0) == 0
    assert all(r.dst != VICTIM.address for r in cores[0].routes() + cores[1].routes())


_FUZZ_FABRIC, _FUZZ_CORES = build_mesh(2, [(0, 1)], seed=12)
_GOOD = [
    Frame(FrameType.DATA, b"f" * 8, _FUZZ_CORES[1].address, _FUZZ_CORES[0].address,
          b"\x01" + bytes(20)).encode(),
    Frame(FrameType.PATH_REQUEST, b"q" * 8, VICTIM.address, ATTACKER.address,
          bytes(14)).encode(),
    Frame(FrameType.ANNOUNCE, b"a" * 8, VICTIM.address, BROADCAST,
          announce_body(VICTIM), ttl=1).encode(),
    b"\x01\x40\x01" + bytes(9),
]


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_receive_never_raises_on_arbitrary_or_mutated_input(data: st.DataObject) -> None:
    core = _FUZZ_CORES[0]
    link = core.neighbours()[0].link_id
    raw = bytearray(data.draw(st.binary(max_size=300)))
    if data.draw(st.booleans()):
        raw = bytearray(data.draw(st.sampled_from(_GOOD)))
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        del raw[data.draw(st.integers(0, len(raw))) :]
    core.receive(link, bytes(raw), now=_FUZZ_FABRIC.now)  # must not raise
    core.frames_to_send()
    while core.next_event() is not None:
        pass
