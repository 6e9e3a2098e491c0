"""The end-to-end layer's timing pieces: lazy deadline heap, RTT estimate, backoff."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from meshd.address import NodeAddress
from meshd.router.backoff import DeadlineHeap, ProbeGate, RetryPolicy, RttTable, backoff_delay

ops = st.lists(
    st.tuples(st.sampled_from(["set", "cancel", "pop"]), st.integers(0, 20),
              st.floats(0.0, 100.0)),
    max_size=300,
)


@given(ops)
def test_deadline_heap_matches_a_plain_dict(operations: list[tuple[str, int, float]]) -> None:
    heap: DeadlineHeap[int] = DeadlineHeap()
    model: dict[int, float] = {}
    for op, key, when in operations:
        if op == "set":
            heap.set(key, when)
            model[key] = when
        elif op == "cancel":
            heap.cancel(key)
            model.pop(key, None)
        else:
            got = heap.pop_due(when)
            due = {k: t for k, t in model.items() if t <= when}
            if got is None:
                assert not due
            else:
                assert got in due and due[got] == min(due.values())
                del model[got]
        assert len(heap) == len(model)
        assert heap.peek() == (min(model.values()) if model else None)
        assert len(heap._heap) <= 4 * 21 + 65  # stale items stay bounded (21 keys at most)


def test_rtt_estimate_follows_rfc6298_and_is_clamped() -> None:
    policy = RetryPolicy()
    table = RttTable(policy)
    dst = NodeAddress(b"d" * 16)
    assert table.rto(dst) == policy.initial_rto
    table.sample(dst, 2.0)  # first sample: SRTT = R, RTTVAR = R/2 -> RTO = 2 + 4 = 6
    assert table.rto(dst) == 6.0
    for _ in range(50):
        table.sample(dst, 0.01)
    assert table.rto(dst) == policy.min_rto
    for _ in range(50):
        table.sample(dst, 500.0)
    assert table.rto(dst) == policy.max_rto
    small = RttTable(RetryPolicy(rtt_table_size=3))
    for i in range(10):
        small.sample(NodeAddress(bytes([i]) * 16), 1.0)
    assert [small.srtt(NodeAddress(bytes([i]) * 16)) is not None for i in range(10)] == (
        [False] * 7 + [True] * 3)


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    policy = RetryPolicy()
    rng = random.Random(1)
    for tries in range(12):
        nominal = min(policy.backoff_cap, 3.0 * 2**tries)
        delay = backoff_delay(3.0, tries, policy, rng)
        assert nominal * 0.8 <= delay <= nominal * 1.2


def test_probe_gate_lets_one_probe_through_at_a_time() -> None:
    gate = ProbeGate()
    dst = NodeAddress(b"x" * 16)
    assert gate.may_probe(dst, 0.0)
    gate.hold(dst, 30.0)
    assert not gate.may_probe(dst, 10.0) and gate.until(dst, 10.0) == 30.0
    gate.hold(dst, 20.0)  # never shortened by a later, shorter hold
    assert gate.until(dst, 10.0) == 30.0
    assert gate.may_probe(dst, 30.0)
    gate.clear(dst)
    assert gate.may_probe(dst, 10.0)
