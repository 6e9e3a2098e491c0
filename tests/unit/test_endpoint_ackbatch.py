"""Batch ACKs: a destination's ACKs of one drain share one signature; forgeries change
nothing; a lone message still gets a version-1 ACK; old single ACKs are still accepted."""

from __future__ import annotations

import random
from dataclasses import replace

from meshd.router.core import CoreConfig
from meshd.router.e2e_bodies import (
    ACK_BATCH_VERSION,
    E2E_BODY_VERSION,
    MAX_ACK_BATCH,
    AckBatchBody,
    AckEntry,
    ack_batch_signed_part,
    decode_ack_batch_body,
    payload_digest,
)
from meshd.router.events import DeliveryState, DeliveryStateChanged
from meshd.router.frames import Frame, FrameType
from meshd.router.reliability import Endpoint
from tests.unit.endpoint_harness import always, drain, endpoint, identity, no_keys


def batching(n: int) -> Endpoint:
    return Endpoint(identity(n), rng=random.Random(n), config=CoreConfig(), batch_acks=True)


def send(a: Endpoint, b: Endpoint, payloads: list[bytes], now: float = 0.0) -> list[bytes]:
    ids = [a.send(b.address, p, now=now, lifetime=None, message_id=None) for p in payloads]
    for frame in a.poll(now=now, can_route=always):
        b.on_local_frame(frame, now=now + 0.01, key_of=no_keys)
    return ids


def delivered(a: Endpoint) -> set[bytes]:
    return {
        e.message_id
        for e in drain(a)
        if isinstance(e, DeliveryStateChanged) and e.state is DeliveryState.DELIVERED
    }


def test_one_signed_ack_covers_a_drain_and_delivers_every_message() -> None:
    a, b = endpoint(1), batching(2)
    ids = send(a, b, [b"m%d" % i for i in range(5)])
    assert b.poll(now=0.02, can_route=always) == []  # held until the drain
    [ack] = b.flush_acks(now=0.02)
    assert (ack.type, ack.src, ack.dst) == (FrameType.ACK, b.address, a.address)
    assert ack.body[0] == ACK_BATCH_VERSION
    body = decode_ack_batch_body(ack.body)
    assert [e.message_id for e in body.entries] == ids
    assert b.flush_acks(now=0.03) == []
    drain(a)
    a.on_local_frame(ack, now=0.05, key_of=no_keys)
    assert delivered(a) == set(ids)
    assert a.stats.acks_verified == 5 and a.stats.acks_forged == 0
    assert b.stats.acks_sent == 5


def test_a_lone_message_gets_a_version_1_ack_and_big_drains_split() -> None:
    a, b = endpoint(1), batching(2)
    [mid] = send(a, b, [b"alone"])
    [ack] = b.flush_acks(now=0.1)
    assert ack.body[0] == E2E_BODY_VERSION  # what nodes without batch ACKs understand
    drain(a)
    a.on_local_frame(ack, now=0.2, key_of=no_keys)
    assert delivered(a) == {mid}
    ids = send(a, b, [b"%d" % i for i in range(MAX_ACK_BATCH + 3)], now=1.0)
    acks = b.flush_acks(now=1.1)
    assert [len(decode_ack_batch_body(f.body).entries) for f in acks[:1]] == [MAX_ACK_BATCH]
    assert len(acks) == 2 and acks[1].body[0] == ACK_BATCH_VERSION
    for f in acks:
        a.on_local_frame(f, now=1.2, key_of=no_keys)
    assert delivered(a) == set(ids)


def _batch_frame(template: Frame, body: AckBatchBody) -> Frame:
    return replace(template, body=body.encode())


def test_forged_or_mismatched_batch_entries_are_refused() -> None:
    a, b = endpoint(1), batching(2)
    ids = send(a, b, [b"x", b"y", b"z"])
    [ack] = b.flush_acks(now=0.1)
    good = decode_ack_batch_body(ack.body)
    drain(a)
    mallory = identity(9)
    b_key = identity(2).public.signing_key
    # Mallory's signature over b's entries, with b's key or her own.
    for key in (b_key, mallory.public.signing_key):
        sig = mallory.sign(ack_batch_signed_part(a.address, b.address, good.entries))
        a.on_local_frame(_batch_frame(ack, AckBatchBody(good.entries, key, sig)), now=0.2,
                         key_of=no_keys)  # fmt: skip
    # b's genuine batch with one entry's digest changed: the signature no longer covers it.
    tampered = list(good.entries)
    tampered[1] = replace(tampered[1], digest=payload_digest(b"other"))
    a.on_local_frame(_batch_frame(ack, replace(good, entries=tuple(tampered))), now=0.2,
                     key_of=no_keys)  # fmt: skip
    assert delivered(a) == set() and a.stats.acks_forged == 9
    # b really signed a batch in which y arrived with other content: only y is refused.
    entries = (good.entries[0], replace(good.entries[1], digest=payload_digest(b"Y")),
               good.entries[2])  # fmt: skip
    sig = identity(2).sign(ack_batch_signed_part(a.address, b.address, entries))
    a.on_local_frame(_batch_frame(ack, AckBatchBody(entries, b_key, sig)), now=0.3,
                     key_of=no_keys)  # fmt: skip
    assert delivered(a) == {ids[0], ids[2]}
    assert a.stats.acks_forged == 10 and a.stats.acks_verified == 2


def test_batch_for_unknown_ids_costs_no_verification_and_duplicates_count_once() -> None:
    a, b = endpoint(1), batching(2)
    ids = send(a, b, [b"p", b"q"])
    [ack] = b.flush_acks(now=0.1)
    body = decode_ack_batch_body(ack.body)
    drain(a)
    doubled = (*body.entries, body.entries[0])
    sig = identity(2).sign(ack_batch_signed_part(a.address, b.address, doubled))
    a.on_local_frame(_batch_frame(ack, AckBatchBody(doubled, body.signer_key, sig)), now=0.2,
                     key_of=no_keys)  # fmt: skip
    assert delivered(a) == set(ids) and a.stats.acks_verified == 2
    a.on_local_frame(ack, now=0.3, key_of=no_keys)  # every id already finished
    assert a.stats.acks_unknown == 2 and a.stats.acks_forged == 0
    stranger = (AckEntry(b"\x07" * 8, 0, payload_digest(b"?")),)
    sig = identity(2).sign(ack_batch_signed_part(a.address, b.address, stranger))
    a.on_local_frame(_batch_frame(ack, AckBatchBody(stranger, body.signer_key, sig)), now=0.4,
                     key_of=no_keys)  # fmt: skip
    assert a.stats.acks_unknown == 3


def test_without_batching_the_endpoint_acks_at_once() -> None:
    a, b = endpoint(1), endpoint(2)
    [mid] = send(a, b, [b"old"])
    [ack] = b.poll(now=0.1, can_route=always)
    assert ack.body[0] == E2E_BODY_VERSION and b.flush_acks(now=0.1) == []
    drain(a)
    a.on_local_frame(ack, now=0.2, key_of=no_keys)
    assert delivered(a) == {mid}
