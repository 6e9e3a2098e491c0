"""Forged, tampered, replayed and malformed end-to-end frames change nothing."""

from __future__ import annotations

import random
from dataclasses import replace

from meshd.address import NodeAddress
from meshd.crypto.identity import PublicIdentity
from meshd.router.backoff import RetryPolicy
from meshd.router.core import CoreConfig
from meshd.router.e2e_bodies import (
    AckBody,
    DataBody,
    ack_signed_part,
    decode_ack_body,
    payload_digest,
)
from meshd.router.events import DeliveryState, DeliveryStateChanged, MessageReceived
from meshd.router.frames import Frame, FrameType
from meshd.router.reliability import Endpoint
from tests.unit.endpoint_harness import always, drain, endpoint, identity, no_keys


def _ack(frame: Frame, body: AckBody, src: NodeAddress | None = None) -> Frame:
    return replace(frame, body=body.encode(), src=src or frame.src)


def test_forged_acks_are_ignored_and_counted() -> None:
    a, b = endpoint(1), endpoint(2)
    mallory = identity(9)
    mid = a.send(b.address, b"real", now=0.0, lifetime=None, message_id=None)
    [data] = a.poll(now=0.0, can_route=always)
    b.on_local_frame(data, now=0.1, key_of=no_keys)
    [ack] = b.poll(now=0.1, can_route=always)
    drain(a)
    good = decode_ack_body(ack.body)
    digest = payload_digest(b"real")

    def mallory_signs(payload_digest_: bytes, key: bytes) -> AckBody:
        sig = mallory.sign(ack_signed_part(mid, a.address, b.address, payload_digest_))
        return AckBody(mid, 0, key, sig)

    forged = [
        # Mallory's own key claiming to be b: the key does not hash to the ACK's src.
        _ack(ack, mallory_signs(digest, mallory.public.signing_key)),
        # b's key in the body, Mallory's signature.
        _ack(ack, mallory_signs(digest, identity(2).public.signing_key)),
        # A flipped bit in b's genuine signature.
        _ack(ack, replace(good, signature=good.signature[:10] + b"\x00" + good.signature[11:])),
        # b's genuine ACK carried over to another message id.
        _ack(ack, replace(good, message_id=b"\x00" * 8)),
    ]
    for frame in forged:
        a.on_local_frame(frame, now=0.2, key_of=no_keys)
    # b's genuine signature, but over a payload a never sent (b got a tampered copy).
    sig = identity(2).sign(ack_signed_part(mid, a.address, b.address, payload_digest(b"fake")))
    a.on_local_frame(_ack(ack, AckBody(mid, 0, good.signer_key, sig)), now=0.2, key_of=no_keys)
    # The genuine ACK when the announced key for b's address differs (keys pinned elsewhere).
    other = PublicIdentity(identity(7).public.signing_key, identity(7).public.exchange_key)
    a.on_local_frame(ack, now=0.2, key_of=lambda _addr: other)

    assert a.stats.acks_forged == 5 and a.stats.acks_unknown == 1
    assert drain(a) == []
    assert [e.message_id for e in a.outbox()] == [mid]
    assert any(f.type is FrameType.DATA for f in a.poll(now=10.0, can_route=always))  # retrying
    a.on_local_frame(ack, now=10.1, key_of=lambda _addr: identity(2).public)
    [event] = drain(a)
    assert isinstance(event, DeliveryStateChanged) and event.state is DeliveryState.DELIVERED


def test_ack_from_a_third_node_for_our_message_is_unknown() -> None:
    a, b, m = endpoint(1), endpoint(2), endpoint(9)
    mid = a.send(b.address, b"x", now=0.0, lifetime=None, message_id=None)
    [data] = a.poll(now=0.0, can_route=always)
    relabelled = replace(data, dst=m.address)
    m.on_local_frame(relabelled, now=0.1, key_of=no_keys)  # m got it somehow and ACKs it
    [ack] = m.poll(now=0.1, can_route=always)
    a.on_local_frame(ack, now=0.2, key_of=no_keys)
    assert a.stats.acks_unknown == 1 and [e.message_id for e in a.outbox()] == [mid]


def test_malformed_bodies_are_counted_never_raised() -> None:
    a, b = endpoint(1), endpoint(2)
    for ftype in (FrameType.DATA, FrameType.ACK, FrameType.CUSTODY_RECEIPT,
                  FrameType.CUSTODY_OFFER):
        for body in (b"", b"\x01", b"\x07" * 40, b"\x01\x80" + b"\x00" * 200):
            frame = Frame(ftype, b"\x01" * 8, a.address, b.address, body)
            b.on_local_frame(frame, now=0.0, key_of=no_keys)
    assert b.stats.malformed == 16
    assert drain(b) == [] and b.poll(now=0.0, can_route=always) == []


def test_frames_for_someone_else_are_ignored() -> None:
    a, b, c = endpoint(1), endpoint(2), endpoint(3)
    a.send(c.address, b"x", now=0.0, lifetime=None, message_id=None)
    [data] = a.poll(now=0.0, can_route=always)
    b.on_local_frame(data, now=0.1, key_of=no_keys)
    assert [e for e in drain(b) if isinstance(e, MessageReceived)] == []


def test_dedup_memory_is_bounded_under_a_flood_of_unique_messages() -> None:
    a = endpoint(1)
    b = Endpoint(identity(2), rng=random.Random(2), config=CoreConfig(),
                 policy=RetryPolicy(seen_capacity=100))
    for i in range(1000):
        frame = Frame(FrameType.DATA, i.to_bytes(8, "big"), a.address, b.address,
                      DataBody(b"p", 60).encode())
        b.on_local_frame(frame, now=float(i) * 0.001, key_of=no_keys)
    assert b.dedup_size == 100 and b.stats.seen_evicted == 900
    assert b.stats.delivered_to_app == 1000
    # Entries end with the message's lifetime (60 s here).
    b.on_local_frame(Frame(FrameType.DATA, b"z" * 8, a.address, b.address,
                           DataBody(b"p", 60).encode()), now=100.0, key_of=no_keys)
    assert b.dedup_size == 1


def test_a_measured_rtt_shortens_the_first_retry() -> None:
    a, b = endpoint(1), endpoint(2)
    a.send(b.address, b"1", now=0.0, lifetime=None, message_id=None)
    [data] = a.poll(now=0.0, can_route=always)
    b.on_local_frame(data, now=0.1, key_of=no_keys)
    [ack] = b.poll(now=0.1, can_route=always)
    a.on_local_frame(ack, now=0.2, key_of=no_keys)
    a.send(b.address, b"2", now=1.0, lifetime=None, message_id=None)
    a.poll(now=1.0, can_route=always)
    deadline = a.next_deadline()
    assert deadline is not None
    # RTO = max(min_rto, SRTT + 4 RTTVAR) = max(1.0, 0.2 + 0.4) = 1.0, +-20 % jitter.
    assert 1.0 + 0.8 <= deadline <= 1.0 + 1.2


def test_a_cached_signer_key_vouches_only_for_its_own_address() -> None:
    """The Endpoint remembers key -> address for ACK checks: after b's genuine ACK, b's
    key must not pass for c (an ACK for a message to c, signed by b, is refused)."""
    a, b = endpoint(1), endpoint(2)
    c = identity(3)
    to_b = a.send(b.address, b"to b", now=0.0, lifetime=None, message_id=None)
    to_c = a.send(c.address, b"to c", now=0.0, lifetime=None, message_id=None)
    frames = a.poll(now=0.0, can_route=always)
    data_b = next(f for f in frames if f.frame_id == to_b)
    data_c = next(f for f in frames if f.frame_id == to_c)
    b.on_local_frame(data_b, now=0.1, key_of=no_keys)
    [ack_b] = b.poll(now=0.1, can_route=always)
    drain(a)
    a.on_local_frame(ack_b, now=0.2, key_of=no_keys)
    assert a.stats.acks_verified == 1
    signed = ack_signed_part(to_c, a.address, c.address, payload_digest(b"to c"))
    body = AckBody(to_c, data_c.attempt, identity(2).public.signing_key,
                   identity(2).sign(signed))
    for _ in range(2):  # b's key is cached by now; refused every time
        a.on_local_frame(replace(ack_b, src=c.address, body=body.encode()), now=0.3,
                         key_of=no_keys)
    assert a.stats.acks_forged == 2 and a.stats.acks_verified == 1
    assert [e.message_id for e in a.outbox()] == [to_c]
