from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import pytest

from meshd.errors import AlreadyExists, InvalidArgument, ResourceExhausted
from meshd.router.core import CoreConfig
from meshd.router.e2e_bodies import MAX_PAYLOAD_LEN, decode_data_body
from meshd.router.events import DeliveryState, DeliveryStateChanged, MessageReceived
from meshd.router.frames import Frame, FrameFlags, FrameType
from meshd.router.reliability import Endpoint
from tests.unit.endpoint_harness import Wire, always, drain, endpoint, identity, no_keys


def states(events: Sequence[object]) -> list[DeliveryState]:
    return [e.state for e in events if isinstance(e, DeliveryStateChanged)]


def test_delivery_ack_and_states_in_order() -> None:
    a, b = endpoint(1), endpoint(2)
    mid = a.send(b.address, b"hello", now=0.0, lifetime=None, message_id=None)
    [data] = a.poll(now=0.0, can_route=always)
    assert data.type is FrameType.DATA and data.frame_id == mid
    assert data.src == a.address and data.dst == b.address
    assert data.flags & FrameFlags.ACK_REQUESTED and data.flags & FrameFlags.CUSTODY_ALLOWED
    a.on_transmitted(mid, now=0.01)
    a.on_next_hop_acked(mid, now=0.02)
    a.on_transmitted(mid, now=0.03)  # late: never backwards

    b.on_local_frame(data.hopped(), now=0.1, key_of=no_keys)
    [received] = drain(b)
    assert received == MessageReceived(a.address, mid, b"hello", 1)
    [ack] = b.poll(now=0.1, can_route=always)
    assert ack.type is FrameType.ACK and ack.src == b.address and ack.dst == a.address
    assert ack.frame_id != mid  # own id: relays must not confuse it with the DATA

    a.on_local_frame(ack, now=0.2, key_of=no_keys)
    events = drain(a)
    assert states(events) == [
        DeliveryState.QUEUED, DeliveryState.SENT, DeliveryState.RELAYED, DeliveryState.DELIVERED
    ]
    assert a.outbox() == []
    assert a.next_deadline() is None
    assert a.stats.acks_verified == 1


def test_retries_back_off_exponentially_with_jitter_and_keep_the_id() -> None:
    a, b = endpoint(1), endpoint(2)
    wire = Wire([a, b], drop=lambda f: f.type is FrameType.DATA and f.attempt < 6)
    mid = a.send(b.address, b"x", now=0.0, lifetime=None, message_id=None)
    wire.run_until(2000.0)
    data = [(f, t) for f, t in _timed(wire) if f.type is FrameType.DATA]
    assert {f.frame_id for f, _ in data} == {mid}
    assert [f.attempt for f, _ in data] == list(range(7))
    times = [t for _, t in data]
    gaps = [t2 - t1 for t1, t2 in itertools.pairwise(times)]
    policy = a.policy
    for i, gap in enumerate(gaps):
        nominal = min(policy.backoff_cap, policy.initial_rto * 2**i)
        assert nominal * (1 - policy.jitter) - 0.11 <= gap <= nominal * (1 + policy.jitter) + 0.11
    assert len(set(round(g / (policy.initial_rto * 2**i), 3) for i, g in enumerate(gaps))) > 1
    assert states(drain(a))[-1] is DeliveryState.DELIVERED
    assert len([e for e in drain(b) if isinstance(e, MessageReceived)]) == 1


def _timed(wire: Wire) -> list[tuple[Frame, float]]:
    return [(f, t) for f, t in zip(wire.sent, wire.sent_at, strict=True)]


def test_lossy_duplicating_wire_delivers_each_message_exactly_once() -> None:
    rng = random.Random(7)
    a, b = endpoint(1), endpoint(2)
    wire = Wire([a, b], drop=lambda _f: rng.random() < 0.4, duplicate=3)
    ids = [a.send(b.address, bytes([i]) * 10, now=0.0, lifetime=None, message_id=None)
           for i in range(40)]
    wire.run_until(3600.0)
    received = [e for e in drain(b) if isinstance(e, MessageReceived)]
    assert sorted(e.message_id for e in received) == sorted(ids)
    delivered = [e for e in drain(a) if isinstance(e, DeliveryStateChanged)
                 and e.state is DeliveryState.DELIVERED]
    assert len(delivered) == 40 and a.outbox() == []
    assert b.stats.duplicates > 0


def test_duplicates_are_acked_again_but_not_in_a_burst() -> None:
    a, b = endpoint(1), endpoint(2)
    a.send(b.address, b"x", now=0.0, lifetime=None, message_id=None)
    [data] = a.poll(now=0.0, can_route=always)
    for _ in range(3):
        b.on_local_frame(data, now=1.0, key_of=no_keys)
    assert len(b.poll(now=1.0, can_route=always)) == 1
    b.on_local_frame(data, now=5.0, key_of=no_keys)  # a retry: the first ACK was lost
    assert [f.type for f in b.poll(now=5.0, can_route=always)] == [FrameType.ACK]
    assert len([e for e in drain(b) if isinstance(e, MessageReceived)]) == 1


def test_lifetime_expiry_fails_with_reason_expired() -> None:
    a, b = endpoint(1), endpoint(2)
    wire = Wire([a, b], drop=lambda f: f.type is FrameType.DATA)
    mid = a.send(b.address, b"x", now=0.0, lifetime=60.0, message_id=None)
    wire.run_until(59.0)
    assert [e.message_id for e in a.outbox()] == [mid]
    wire.run_until(61.0)
    last = drain(a)[-1]
    assert isinstance(last, DeliveryStateChanged)
    assert (last.state, last.reason) == (DeliveryState.FAILED, "expired")
    assert a.outbox() == [] and a.next_deadline() is None


def test_send_validates_arguments_and_bounds_the_outbox() -> None:
    a, b = endpoint(1, config=CoreConfig(outbox_limit=2)), endpoint(2)
    with pytest.raises(InvalidArgument) as err:
        a.send(b.address, b"x" * (MAX_PAYLOAD_LEN + 1), now=0, lifetime=None, message_id=None)
    assert err.value.field == "payload"
    a.send(b.address, b"x" * MAX_PAYLOAD_LEN, now=0, lifetime=None, message_id=b"12345678")
    with pytest.raises(AlreadyExists):
        a.send(b.address, b"x", now=0, lifetime=None, message_id=b"12345678")
    for bad_id in (b"short", b"123456789"):
        with pytest.raises(InvalidArgument) as err:
            a.send(b.address, b"x", now=0, lifetime=None, message_id=bad_id)
        assert err.value.field == "message_id"
    for bad_lifetime in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidArgument) as err:
            a.send(b.address, b"x", now=0, lifetime=bad_lifetime, message_id=None)
        assert err.value.field == "lifetime"
    with pytest.raises(InvalidArgument) as err:
        a.send(a.address, b"x", now=0, lifetime=None, message_id=None)
    assert err.value.field == "dst"
    a.send(b.address, b"y", now=0, lifetime=None, message_id=None)
    with pytest.raises(ResourceExhausted):
        a.send(b.address, b"z", now=0, lifetime=None, message_id=None)
    assert len(a.outbox()) == 2


def test_restore_after_restart_continues_retrying() -> None:
    a, b = endpoint(1), endpoint(2)
    mid = a.send(b.address, b"persist me", now=0.0, lifetime=600.0, message_id=None)
    a.poll(now=0.0, can_route=always)  # lost
    a.on_transmitted(mid, now=0.0)
    saved = a.outbox()
    assert saved[0].state is DeliveryState.SENT and saved[0].attempts == 1

    a2 = Endpoint(identity(1), rng=random.Random(99), config=CoreConfig())
    a2.restore(saved, now=100.0)
    assert a2.outbox() == saved
    wire = Wire([a2, b], now=100.0)
    wire.run_until(110.0)
    events = drain(a2)
    assert states(events) == [DeliveryState.DELIVERED]
    [got] = [e for e in drain(b) if isinstance(e, MessageReceived)]
    assert got.message_id == mid and got.payload == b"persist me"
    data = [f for f in wire.sent if f.type is FrameType.DATA]
    assert data[0].attempt == 1  # continues the count (relay dedup sees a new attempt)
    assert decode_data_body(data[0].body).lifetime_left == 500


def test_restore_fails_entries_whose_lifetime_ended() -> None:
    a, b = endpoint(1), endpoint(2)
    a.send(b.address, b"x", now=0.0, lifetime=10.0, message_id=None)
    saved = a.outbox()
    a2 = endpoint(1, seed=5)
    a2.restore(saved, now=50.0)
    [event] = drain(a2)
    assert isinstance(event, DeliveryStateChanged)
    assert (event.state, event.reason) == (DeliveryState.FAILED, "expired")
    assert a2.outbox() == []


def test_unroutable_destination_probes_one_message_at_a_time() -> None:
    a, b = endpoint(1), endpoint(2)
    for i in range(20):
        a.send(b.address, bytes([i]), now=0.0, lifetime=None, message_id=None)
    blocked = Wire([a, b])
    blocked.online = {a.address}
    blocked.run_until(100.0)
    times = [t for f, t in zip(blocked.sent, blocked.sent_at, strict=True)
             if f.type is FrameType.DATA]
    # One probe at a time per destination (the router floods/discovers with it), not 20.
    assert 1 <= len(times) <= 5
    assert all(t2 - t1 >= a.policy.unroutable_wait for t1, t2 in itertools.pairwise(times))
    a.path_available(b.address, now=100.0)
    wire = Wire([a, b], now=100.0)
    wire.run_until(105.0)
    assert len([e for e in drain(b) if isinstance(e, MessageReceived)]) == 20
    assert a.outbox() == []


def test_the_retry_clock_starts_when_the_frame_leaves() -> None:
    a, b = endpoint(1), endpoint(2)
    mid = a.send(b.address, b"x", now=0.0, lifetime=None, message_id=None)
    [first] = a.poll(now=0.0, can_route=lambda _d: False)  # the router will discover first
    assert first.frame_id == mid
    assert a.next_deadline() == pytest.approx(a.policy.unroutable_wait, abs=0.01)
    a.on_transmitted(mid, now=12.0)  # discovery found a path after 12 s
    deadline = a.next_deadline()
    assert deadline is not None
    assert 12.0 + 3.0 * 0.8 <= deadline <= 12.0 + 3.0 * 1.2
    assert a.poll(now=13.0, can_route=always) == []
    b.on_local_frame(first, now=12.5, key_of=no_keys)
    [ack] = b.poll(now=12.5, can_route=always)
    a.on_local_frame(ack, now=13.0, key_of=no_keys)
    # RTT measured from the transmission (1 s), not from the send call (13 s).
    a.send(b.address, b"y", now=20.0, lifetime=None, message_id=None)
    a.poll(now=20.0, can_route=always)
    deadline = a.next_deadline()
    assert deadline is not None and deadline <= 20.0 + 3.0 * 1.2


def test_path_available_does_not_duplicate_a_copy_the_router_still_holds() -> None:
    a, b = endpoint(1), endpoint(2)
    mid = a.send(b.address, b"x", now=0.0, lifetime=None, message_id=None)
    [first] = a.poll(now=0.0, can_route=lambda _d: False)
    # Discovery succeeded: the router flushes its buffered copy and says so.
    a.path_available(b.address, now=2.0)
    assert a.poll(now=2.0, can_route=always) == []
    a.on_transmitted(mid, now=2.0)
    # Next attempt: the router gives up on it, then a path appears: retry at once.
    [second] = a.poll(now=10.0, can_route=always)
    assert (first.attempt, second.attempt) == (0, 1)
    a.on_route_failed(mid, now=10.5)
    a.path_available(b.address, now=11.0)
    [third] = a.poll(now=11.0, can_route=always)
    assert third.attempt == 2
