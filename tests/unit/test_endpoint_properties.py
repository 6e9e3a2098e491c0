"""Property tests: whatever the channel does (loss, duplicates, delay, reordering), every
message reaches the app exactly once and the sender's states only move forward."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.router.events import DeliveryState, DeliveryStateChanged, MessageReceived
from meshd.router.outbox import STATE_RANK
from tests.unit.endpoint_harness import LossyLink, drain, endpoint


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.5),
    duplicate=st.floats(0.0, 0.5),
    max_delay=st.floats(0.0, 5.0),
    count=st.integers(1, 6),
    both_ways=st.booleans(),
)
def test_exactly_once_and_monotone_states_over_a_hostile_channel(
    seed: int, loss: float, duplicate: float, max_delay: float, count: int, both_ways: bool
) -> None:
    a, b = endpoint(1, seed=seed % 1000), endpoint(2, seed=seed % 1000)
    link = LossyLink([a, b], random.Random(seed), loss, duplicate, max_delay)
    sent = {a.send(b.address, b"a%d" % i, now=0.0, lifetime=None, message_id=None): b
            for i in range(count)}
    if both_ways:
        sent.update({b.send(a.address, b"b%d" % i, now=0.0, lifetime=None, message_id=None): a
                     for i in range(count)})
    link.run_until(20_000.0)
    received: dict[bytes, int] = {}
    states: dict[bytes, list[DeliveryState]] = {}
    for ep in (a, b):
        for event in drain(ep):
            if isinstance(event, MessageReceived):
                assert sent[event.message_id] is ep
                received[event.message_id] = received.get(event.message_id, 0) + 1
            elif isinstance(event, DeliveryStateChanged):
                states.setdefault(event.message_id, []).append(event.state)
    assert received == {mid: 1 for mid in sent}
    for mid in sent:
        ranks = [STATE_RANK[s] for s in states[mid]]
        assert ranks == sorted(set(ranks)), states[mid]  # strictly forward
        assert states[mid][-1] is DeliveryState.DELIVERED
    assert a.outbox() == [] and b.outbox() == []
