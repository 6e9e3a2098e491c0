from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace

import pytest

from meshd.router.core import CoreConfig
from meshd.router.e2e_bodies import (
    DataBody,
    decode_data_body,
    decode_offer_body,
    decode_receipt_body,
)
from meshd.router.events import DeliveryState, DeliveryStateChanged, MessageReceived
from meshd.router.frames import Frame, FrameFlags, FrameType
from tests.unit.endpoint_harness import Wire, always, drain, endpoint, identity, never, no_keys


def held_states(events: Sequence[object]) -> list[tuple[DeliveryState, object]]:
    return [(e.state, e.custodian) for e in events if isinstance(e, DeliveryStateChanged)]



def test_custody_receipt_stops_sender_retries() -> None:
    r, b = endpoint(2), endpoint(3)
    senders = [endpoint(1), endpoint(4)]
    for sender in senders:
        sender.send(b.address, b"for b", now=0.0, lifetime=None, message_id=None)
        [data] = sender.poll(now=0.0, can_route=always)
        assert r.take_custody(data.hopped(), now=0.5)
        [receipt] = r.poll(now=0.5, can_route=never)
        assert receipt.type is FrameType.CUSTODY_RECEIPT
        assert (receipt.src, receipt.dst) == (r.address, sender.address)
        sender.on_local_frame(receipt, now=0.6, key_of=no_keys)
        assert held_states(drain(sender))[-1] == (DeliveryState.HELD_BY_CUSTODIAN, r.address)
        assert [e.state for e in sender.outbox()] == [DeliveryState.HELD_BY_CUSTODIAN]
    quiet, routed = senders
    # Without a route the sender sends nothing at all, however long it waits ...
    assert [f for t in range(1, 24 * 3600, 60) for f in quiet.poll(now=t, can_route=never)] == []
    # ... and with one, only confirmation probes, the first long after the custodian took it.
    sent = [(t, f) for t in range(1, 1200) for f in routed.poll(now=t, can_route=always)]
    assert sent and all(f.type is FrameType.DATA for _, f in sent)
    assert sent[0][0] >= 0.6 + routed.policy.held_probe_interval * (1 - routed.policy.jitter)
    assert routed.stats.retries == 0 and quiet.stats.retries == 0


def test_custody_hand_off_to_the_destination_keeps_src_and_id() -> None:
    a, r, b = endpoint(1), endpoint(2), endpoint(3)
    mid = a.send(b.address, b"payload", now=0.0, lifetime=3600.0, message_id=None)
    [data] = a.poll(now=0.0, can_route=always)
    assert r.take_custody(data, now=1.0)
    r.poll(now=1.0, can_route=never)  # the receipt to a (dropped here)
    # No route: the custodian probes at most once per probe interval, not on every timer.
    # A probe is a bare DATA copy (same src and id) that makes the router discover a path.
    probes = []
    for t in range(2, 200):
        for frame in r.poll(now=float(t), can_route=never):
            probes.append((t, frame))
            r.on_route_failed(frame.frame_id, now=t + 0.5)  # the router's discovery failed
    assert 1 <= len(probes) <= 4
    assert all(f.type is FrameType.DATA and (f.src, f.frame_id) == (a.address, mid)
               for _, f in probes)
    gaps = [t2 - t1 for (t1, _), (t2, _) in itertools.pairwise(probes)]
    assert all(gap >= r.policy.probe_interval * (1 - r.policy.jitter) for gap in gaps)
    r.path_available(b.address, now=200.0)
    [offer] = r.poll(now=200.0, can_route=always)
    # With a route: wrapped in a CUSTODY_OFFER from r (relays never see a's address as
    # the src of a frame that does not come from a).
    assert (offer.type, offer.src, offer.dst) == (FrameType.CUSTODY_OFFER, r.address, b.address)
    handoff = decode_offer_body(offer.body).inner
    assert (handoff.src, handoff.dst, handoff.frame_id) == (a.address, b.address, mid)
    body = decode_data_body(handoff.body)
    assert body.custodian == r.address and body.payload == b"payload"
    assert body.lifetime_left == 3401  # taken at t=1 with 3600 s left
    b.on_local_frame(offer, now=200.1, key_of=no_keys)
    [got] = drain(b)
    assert isinstance(got, MessageReceived) and got.src == a.address and got.message_id == mid
    # The destination answers the custodian only; the custodian relays that to the sender.
    [receipt] = b.poll(now=200.1, can_route=always)
    assert (receipt.type, receipt.dst) == (FrameType.CUSTODY_RECEIPT, r.address)
    r.on_local_frame(receipt, now=200.2, key_of=no_keys)
    assert r.custody() == []
    # The destination's receipt is passed on to the sender: proof of delivery even when
    # the ACK is lost (the sender may have been offline then).
    [relayed] = r.poll(now=200.2, can_route=always)
    assert (relayed.type, relayed.src, relayed.dst) == (
        FrameType.CUSTODY_RECEIPT, r.address, a.address)
    assert r.next_deadline() is None
    a.on_local_frame(relayed, now=200.3, key_of=no_keys)
    assert held_states(drain(a))[-1][0] is DeliveryState.DELIVERED
    assert a.outbox() == []


def test_custodian_retries_hand_off_until_a_receipt_arrives() -> None:
    a, r, b = endpoint(1), endpoint(2), endpoint(3)
    a.send(b.address, b"p", now=0.0, lifetime=None, message_id=None)
    [data] = a.poll(now=0.0, can_route=always)
    assert r.take_custody(data, now=0.0)
    r.poll(now=0.0, can_route=never)
    handoffs = []
    t = 1.0
    while t < 400.0:
        handoffs += r.poll(now=t, can_route=always)
        t += 0.5
    assert len(handoffs) >= 4
    assert all(f.type is FrameType.CUSTODY_OFFER for f in handoffs)
    assert len({f.frame_id for f in handoffs}) == len(handoffs)  # relays see new frames
    inner = [decode_offer_body(f.body).inner for f in handoffs]
    assert len({f.attempt for f in inner}) == len(inner)
    assert len(r.custody()) == 1  # no receipt: still held



@pytest.mark.parametrize("limit", ["frames", "bytes"])
def test_custody_is_bounded_and_expired_frames_make_room(limit: str) -> None:
    config = (CoreConfig(custody_limit_frames=3, custody_lifetime=100.0) if limit == "frames"
              else CoreConfig(custody_limit_bytes=3 * (46 + 6 + 1000), custody_lifetime=100.0))
    r = endpoint(2, config=config)
    a, b = endpoint(1), endpoint(3)
    for i in range(4):
        a.send(b.address, bytes([i]) * 1000, now=0.0, lifetime=None, message_id=None)
    frames = a.poll(now=0.0, can_route=always)
    assert [r.take_custody(f, now=1.0) for f in frames] == [True, True, True, False]
    assert r.stats.custody_refused == 1
    assert r.take_custody(frames[0], now=2.0)  # already held: still True (receipt again)
    assert len(r.custody()) == 3
    assert r.take_custody(frames[3], now=102.0)  # the others expired
    assert len(r.custody()) == 1 and r.stats.custody_expired == 3


def test_custody_refuses_what_it_must_not_hold() -> None:
    a, r, b = endpoint(1), endpoint(2), endpoint(3)
    a.send(b.address, b"x", now=0.0, lifetime=None, message_id=None)
    [data] = a.poll(now=0.0, can_route=always)
    no_custody = Frame(data.type, data.frame_id, data.src, data.dst, data.body,
                       FrameFlags.ACK_REQUESTED)
    assert not r.take_custody(no_custody, now=1.0)
    for_me = Frame(data.type, data.frame_id, data.src, r.address, data.body, data.flags)
    assert not r.take_custody(for_me, now=1.0)
    garbage = Frame(data.type, data.frame_id, data.src, data.dst, b"\x09junk", data.flags)
    assert not r.take_custody(garbage, now=1.0)
    dead = Frame(data.type, data.frame_id, data.src, data.dst,
                 DataBody(b"x", 0).encode(), data.flags)
    assert not r.take_custody(dead, now=1.0)
    assert r.custody() == []


def test_receipts_and_acks_must_verify() -> None:
    a, r, b, m = endpoint(1), endpoint(2), endpoint(3), endpoint(4)
    a.send(b.address, b"x", now=0.0, lifetime=None, message_id=None)
    [data] = a.poll(now=0.0, can_route=always)
    assert r.take_custody(data, now=0.0)
    [receipt] = r.poll(now=0.0, can_route=never)
    # A receipt replayed by someone else (src m) does not verify: key hashes to r.
    stolen = Frame(receipt.type, receipt.frame_id, m.address, receipt.dst, receipt.body)
    a.on_local_frame(stolen, now=0.1, key_of=no_keys)
    tampered = Frame(receipt.type, receipt.frame_id, receipt.src, receipt.dst,
                     receipt.body[:-1] + bytes([receipt.body[-1] ^ 1]))
    a.on_local_frame(tampered, now=0.1, key_of=no_keys)
    assert a.stats.receipts_forged == 2
    assert [e.state for e in a.outbox()] == [DeliveryState.QUEUED]
    body = decode_receipt_body(receipt.body)
    assert body.origin == a.address
    # A custodian cannot claim delivery: b's key with r's signature does not verify.
    fake = replace(body, signer_key=identity(3).public.signing_key)
    a.on_local_frame(replace(receipt, body=fake.encode()), now=0.2, key_of=no_keys)
    assert a.stats.receipts_forged == 3
    assert [e.state for e in a.outbox()] == [DeliveryState.QUEUED]
    a.on_local_frame(receipt, now=0.3, key_of=no_keys)
    assert [e.state for e in a.outbox()] == [DeliveryState.HELD_BY_CUSTODIAN]


def test_offer_hands_custody_to_a_better_custodian() -> None:
    a, r1, r2, b = endpoint(1), endpoint(2), endpoint(5), endpoint(3)
    mid = a.send(b.address, b"x", now=0.0, lifetime=None, message_id=None)
    [data] = a.poll(now=0.0, can_route=always)
    assert r1.take_custody(data, now=0.0)
    r1.poll(now=0.0, can_route=never)
    assert r1.offer_custody(r2.address, now=1.0) == 1
    [offer] = r1.poll(now=1.0, can_route=never)
    assert offer.type is FrameType.CUSTODY_OFFER and offer.dst == r2.address
    r2.on_local_frame(offer, now=1.1, key_of=no_keys)
    assert [f.frame_id for f in r2.custody()] == [mid]
    [receipt] = r2.poll(now=1.1, can_route=never)
    assert receipt.dst == r1.address
    r1.on_local_frame(receipt, now=1.2, key_of=no_keys)
    assert r1.custody() == [] and r1.stats.custody_released == 1


def test_destination_offline_for_an_hour_gets_the_message_through_the_custodian() -> None:
    """Issue 2 acceptance, end-to-end layer only: the sender leaves, the custodian delivers."""
    a, r, b = endpoint(1), endpoint(2), endpoint(3)
    wire = Wire([a, r, b])
    wire.online = {a.address, r.address}  # b is away
    # The sender's frame cannot reach b: the "router" at r takes custody.
    mid = a.send(b.address, b"see you later", now=0.0, lifetime=None, message_id=None)
    [data] = a.poll(now=0.0, can_route=always)
    assert r.take_custody(data.hopped(), now=0.05)
    wire.now = 0.1
    wire.run_until(10.0)
    assert [e.state for e in a.outbox()] == [DeliveryState.HELD_BY_CUSTODIAN]
    wire.online = {r.address}  # the sender goes offline too
    wire.run_until(3600.0)
    assert drain(b) == []
    wire.online = {r.address, b.address}  # b is back an hour later
    r.path_available(b.address, now=3600.0)
    wire.run_until(3610.0)
    received = [e for e in drain(b) if isinstance(e, MessageReceived)]
    assert [(e.src, e.message_id, e.payload) for e in received] == [
        (a.address, mid, b"see you later")
    ]
    assert r.custody() == []
    # The sender comes back; a path to b makes it re-probe once and learn it was delivered.
    wire.online = {a.address, r.address, b.address}
    wire.now = 7200.0
    a.path_available(b.address, now=7200.0)
    wire.run_until(7210.0)
    assert held_states(drain(a))[-1][0] is DeliveryState.DELIVERED
    assert [e for e in drain(b) if isinstance(e, MessageReceived)] == []  # exactly once


def test_a_sender_leaves_its_unroutable_messages_with_a_neighbour() -> None:
    a, n, b = endpoint(1), endpoint(2), endpoint(3)
    mid = a.send(b.address, b"bye", now=0.0, lifetime=None, message_id=None)
    [data] = a.poll(now=0.0, can_route=never)
    assert a.offer_custody(n.address, now=0.5) == 0  # not route-failed yet: nothing offered
    a.on_route_failed(mid, now=1.0)  # the router gave up (no path to b)
    assert a.offer_custody(n.address, now=1.0) == 1
    [offer] = a.poll(now=1.0, can_route=never)
    assert (offer.type, offer.src, offer.dst) == (FrameType.CUSTODY_OFFER, a.address, n.address)
    n.on_local_frame(offer, now=1.1, key_of=no_keys)
    [receipt] = n.poll(now=1.1, can_route=never)
    assert receipt.dst == a.address
    a.on_local_frame(receipt, now=1.2, key_of=no_keys)
    assert held_states(drain(a))[-1] == (DeliveryState.HELD_BY_CUSTODIAN, n.address)
    # a goes away; b appears next to n later.
    n.path_available(b.address, now=5000.0)
    [offer] = n.poll(now=5000.0, can_route=always)
    handoff = decode_offer_body(offer.body).inner
    assert offer.dst == b.address and (handoff.src, handoff.frame_id) == (a.address, mid)
    b.on_local_frame(offer, now=5000.1, key_of=no_keys)
    [got] = drain(b)
    assert isinstance(got, MessageReceived) and got.payload == b"bye"
    assert data.frame_id == mid


def test_custody_passes_along_a_chain_of_custodians() -> None:
    a, r1, r2, b = endpoint(1), endpoint(2), endpoint(5), endpoint(3)
    mid = a.send(b.address, b"relay race", now=0.0, lifetime=None, message_id=None)
    [data] = a.poll(now=0.0, can_route=always)
    assert r1.take_custody(data.hopped(), now=0.1)
    [receipt1] = r1.poll(now=0.1, can_route=never)
    a.on_local_frame(receipt1, now=0.2, key_of=no_keys)
    assert held_states(drain(a))[-1] == (DeliveryState.HELD_BY_CUSTODIAN, r1.address)
    # r1 probes; the probe reaches r2, whose router cannot go further either.
    [probe] = [f for t in range(1, 20) for f in r1.poll(now=float(t), can_route=never)]
    assert probe.type is FrameType.DATA and decode_data_body(probe.body).custodian == r1.address
    assert r2.take_custody(probe.hopped(), now=20.0)
    [receipt2] = r2.poll(now=20.0, can_route=never)
    assert receipt2.dst == r1.address  # the previous custodian, not the sender
    r1.on_local_frame(receipt2, now=20.1, key_of=no_keys)
    assert r1.custody() == [] and r1.stats.custody_released == 1
    # b shows up next to r2.
    r2.path_available(b.address, now=500.0)
    [offer] = r2.poll(now=500.0, can_route=always)
    b.on_local_frame(offer, now=500.1, key_of=no_keys)
    [got] = drain(b)
    assert isinstance(got, MessageReceived) and (got.src, got.message_id) == (a.address, mid)
    [receipt3] = b.poll(now=500.1, can_route=always)
    assert receipt3.dst == r2.address
    r2.on_local_frame(receipt3, now=500.2, key_of=no_keys)
    [relayed] = r2.poll(now=500.2, can_route=always)
    assert relayed.dst == a.address
    a.on_local_frame(relayed, now=500.3, key_of=no_keys)
    assert held_states(drain(a))[-1][0] is DeliveryState.DELIVERED


def test_custody_survives_a_restart() -> None:
    a, r, b = endpoint(1), endpoint(2), endpoint(3)
    mid = a.send(b.address, b"keep me", now=0.0, lifetime=1000.0, message_id=None)
    [data] = a.poll(now=0.0, can_route=always)
    assert r.take_custody(data, now=0.0)
    saved = r.custody_records()
    assert [(f.frame_id, until) for f, until in saved] == [(mid, 1000.0)]
    assert r.custody() == [data]
    r2 = endpoint(2, seed=9)
    r2.restore_custody([*saved, *saved, (data, 5.0)], now=10.0)  # duplicate, expired: skipped
    assert len(r2.custody()) == 1
    r2.path_available(b.address, now=10.0)
    [offer] = r2.poll(now=10.0, can_route=always)
    b.on_local_frame(offer, now=10.1, key_of=no_keys)
    assert [e.message_id for e in drain(b) if isinstance(e, MessageReceived)] == [mid]
    r2.poll(now=2000.0, can_route=never)
    assert r2.custody() == []  # held no longer than the message's lifetime


def test_a_flooded_copy_is_handed_on_as_unicast() -> None:
    a, r, b = endpoint(1), endpoint(2), endpoint(3)
    a.send(b.address, b"x", now=0.0, lifetime=None, message_id=None)
    [data] = a.poll(now=0.0, can_route=always)
    flooded = replace(data, flags=data.flags | FrameFlags.FLOOD)
    assert r.take_custody(flooded, now=0.0)
    r.path_available(b.address, now=1.0)
    offers = [f for f in r.poll(now=1.0, can_route=always) if f.type is FrameType.CUSTODY_OFFER]
    inner = decode_offer_body(offers[0].body).inner
    assert not inner.flags & FrameFlags.FLOOD and inner.flags & FrameFlags.CUSTODY_ALLOWED
