"""LINK_ACK batching: what a node received between two drains is acknowledged in one
LINK_ACK per link (at most 64 keys each), and each key still clears the sender's copy."""

from __future__ import annotations

import random

from meshd.router.bodies import MAX_LINK_ACKS, decode_link_ack, encode_link_ack
from meshd.router.core import MeshCore
from meshd.router.events import DeliveryState, DeliveryStateChanged
from meshd.router.frames import FrameType, peek_type
from meshd.router.types import LinkInfo, LinkKind
from meshd.testing.memlink import identity_for


def pair() -> tuple[MeshCore, MeshCore]:
    ia, ib = identity_for(0, seed=7), identity_for(1, seed=7)
    a = MeshCore(ia, now=0.0, rng=random.Random(1))
    b = MeshCore(ib, now=0.0, rng=random.Random(2))
    a.link_up(1, ib.public, LinkInfo(LinkKind.MEMORY), now=0.0)
    b.link_up(1, ia.public, LinkInfo(LinkKind.MEMORY), now=0.0)
    a.frames_to_send()
    b.frames_to_send()
    return a, b


def link_acks(frames: list[tuple[int, bytes]]) -> list[list[tuple[bytes, int]]]:
    return [decode_link_ack(d) for _, d in frames if peek_type(d) is FrameType.LINK_ACK]


def data_frames(core: MeshCore) -> list[bytes]:
    return [d for _, d in core.frames_to_send() if peek_type(d) is FrameType.DATA]


def test_frames_received_between_drains_share_one_link_ack() -> None:
    a, b = pair()
    for k in range(5):
        a.send(b.address, b"m%d" % k, now=0.1)
    sent = data_frames(a)
    assert len(sent) == 5
    for data in sent:
        b.receive(1, data, now=0.2)
    b.receive(1, sent[0], now=0.2)  # a duplicate is acknowledged, but not twice
    acks = link_acks(b.frames_to_send())
    assert len(acks) == 1 and len(acks[0]) == 5
    assert b.stats().tx["LINK_ACK"] == 1
    # Every key in it clears one of A's in-flight copies: all five are RELAYED.
    a.receive(1, encode_link_ack(acks[0]), now=0.3)
    relayed = {e.message_id for e in _events(a) if isinstance(e, DeliveryStateChanged)
               and e.state is DeliveryState.RELAYED}
    assert len(relayed) == 5
    assert a.router.linkrel.inflight_count() == 0


def test_more_than_64_acks_are_split_and_drained_acks_are_not_resent() -> None:
    a, b = pair()
    n = MAX_LINK_ACKS + 6
    for k in range(n):
        a.send(b.address, b"m%d" % k, now=0.1)
    sent = data_frames(a)
    assert len(sent) == n
    for data in sent:
        b.receive(1, data, now=0.2)
    acks = link_acks(b.frames_to_send())
    assert [len(x) for x in acks] == [MAX_LINK_ACKS, 6]
    assert len({key for x in acks for key in x}) == n
    assert link_acks(b.frames_to_send()) == []


def test_acks_owed_on_a_link_that_went_down_are_dropped() -> None:
    a, b = pair()
    a.send(b.address, b"m", now=0.1)
    (data,) = data_frames(a)
    b.receive(1, data, now=0.2)
    b.link_down(1, now=0.3)
    assert link_acks(b.frames_to_send()) == []


def _events(core: MeshCore) -> list[object]:
    out: list[object] = []
    while (event := core.next_event()) is not None:
        out.append(event)
    return out
