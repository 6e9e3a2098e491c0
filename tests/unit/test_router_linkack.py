"""LINK_ACK batching: what a node received between two drains is acknowledged in one
LINK_ACK per link (at most 64 keys each), and each key still clears the sender's copy."""

from __future__ import annotations

import random

import pytest

from meshd.router.bodies import MAX_LINK_ACKS, decode_link_ack, encode_link_ack
from meshd.router.core import MeshCore
from meshd.router.events import DeliveryState, DeliveryStateChanged
from meshd.router.frames import Frame, FrameType, peek_type
from meshd.router.linkrel import (
    INITIAL_RTO,
    THROUGHPUT_PRIOR,
    LinkReliability,
    link_throughput,
)
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


# --- size-aware retransmission (meshd/router/linkrel.py) ------------------------------
BIG = 50_000
BLE_RATE = 12_500.0  # bytes/s: a 50 KB frame takes 4 s, as on BLE at ATT MTU 23


def _frame(k: int, size: int) -> tuple[Frame, bytes]:
    ia, ib = identity_for(0, seed=7), identity_for(1, seed=7)
    frame = Frame(FrameType.DATA, bytes([k]) * 8, ia.address, ib.address, b"x" * size)
    return frame, frame.encode()


def _slow_link(throughput: float | None = BLE_RATE) -> LinkReliability:
    rel = LinkReliability()
    rel.add_link(1, 1.0, throughput)
    return rel


def _resent_until(rel: LinkReliability, end: float, step: float = 0.05) -> list[float]:
    times = []
    for i in range(int(end / step) + 1):
        resend, _ = rel.due(now=i * step)
        times += [i * step for _ in resend]
    return times


def test_a_large_frame_on_a_slow_link_is_not_resent_while_it_goes_out() -> None:
    rel = _slow_link()
    frame, data = _frame(1, BIG)
    assert rel.track(1, frame, data, local=True, upstream=None, now=0.0)
    tx = len(data) / BLE_RATE
    resent = _resent_until(rel, tx + INITIAL_RTO - 0.1)
    assert resent == []  # the old timer (RTO alone, 1 s) had resent it 3 times by now
    # Really lost: resent once its transmission time and an RTO have passed.
    assert _resent_until(rel, tx + INITIAL_RTO + 0.1)[:1] == [pytest.approx(tx + INITIAL_RTO,
                                                                               abs=0.06)]


def test_a_lost_small_frame_is_still_resent_at_rto() -> None:
    rel = _slow_link()
    frame, data = _frame(2, 100)
    assert rel.track(1, frame, data, local=True, upstream=None, now=0.0)
    resent = _resent_until(rel, 1.2)
    assert resent and INITIAL_RTO - 0.05 <= resent[0] <= INITIAL_RTO + len(data) / BLE_RATE + 0.05


def test_frames_queued_behind_a_large_one_wait_for_it() -> None:
    rel = _slow_link()
    big, big_data = _frame(3, BIG)
    small, small_data = _frame(4, 100)
    rel.track(1, big, big_data, local=True, upstream=None, now=0.0)
    rel.track(1, small, small_data, local=True, upstream=None, now=0.0)
    # The small frame goes out after the big one: no retransmission before 4 s + RTO.
    assert _resent_until(rel, len(big_data) / BLE_RATE + INITIAL_RTO - 0.1) == []


def test_throughput_is_learned_from_acks_of_large_frames() -> None:
    rel = _slow_link(throughput=3_000.0)  # a prior 4x too low
    for k in range(12):
        t0 = 100.0 * k
        frame, data = _frame(10 + k, BIG)
        rel.track(1, frame, data, local=True, upstream=None, now=t0)
        assert rel.acked(1, frame.dedup_key, now=t0 + len(data) / BLE_RATE + 0.05) is not None
    learned = rel.throughput(1)
    assert learned is not None and 0.8 * BLE_RATE < learned < 1.3 * BLE_RATE
    # With it, the next 50 KB frame's deadline is ~4 s + RTO, not 50 s + RTO.
    frame, data = _frame(30, BIG)
    rel.track(1, frame, data, local=True, upstream=None, now=2000.0)
    stats = rel.links[1]
    deadline = stats.inflight[frame.dedup_key].deadline - 2000.0
    assert len(data) / BLE_RATE < deadline < len(data) / BLE_RATE * 1.3 + stats.rto
    # The SRTT measured the latency (0.05 s), not the 4 s transmission.
    assert stats.srtt is not None and stats.srtt < 0.5


def test_a_slow_link_with_no_prior_gets_a_seed_estimate() -> None:
    rel = _slow_link(throughput=None)
    frame, data = _frame(40, BIG)
    rel.track(1, frame, data, local=True, upstream=None, now=0.0)
    rel.due(now=INITIAL_RTO + 0.01)  # resent at RTO: the link was thought fast
    assert rel.acked(1, frame.dedup_key, now=4.1) is not None
    seeded = rel.throughput(1)
    assert seeded is not None and seeded <= BLE_RATE  # errs low


def test_ble_links_start_with_a_prior_and_a_transport_bitrate_wins() -> None:
    assert link_throughput(LinkInfo(LinkKind.BLE)) == THROUGHPUT_PRIOR[LinkKind.BLE]
    assert link_throughput(LinkInfo(LinkKind.INET)) is None
    assert link_throughput(LinkInfo(LinkKind.BLE, bitrate=800_000.0)) == 100_000.0
    a, _ = pair()
    a.link_up(2, identity_for(2, seed=7).public, LinkInfo(LinkKind.BLE), now=0.0)
    assert a.router.linkrel.throughput(2) == THROUGHPUT_PRIOR[LinkKind.BLE]
    a.link_changed(2, LinkInfo(LinkKind.BLE, bitrate=80_000.0), now=0.1)
    assert a.router.linkrel.throughput(2) == 10_000.0


def test_frames_sent_behind_others_give_no_throughput_sample() -> None:
    rel = _slow_link(throughput=10_000.0)
    ahead, ahead_data = _frame(50, 100)
    big, big_data = _frame(51, BIG)
    rel.track(1, ahead, ahead_data, local=True, upstream=None, now=0.0)
    rel.track(1, big, big_data, local=True, upstream=None, now=0.0)
    # Its ACK is late for reasons other than the link's rate (queueing, ACK batching).
    assert rel.acked(1, big.dedup_key, now=30.0) is not None
    assert rel.throughput(1) == 10_000.0
