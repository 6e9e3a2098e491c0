"""Unit tests of the router's parts: path table, seen-set, token bucket, hop-by-hop
retransmission, clusters and link advice, battery penalty."""

from __future__ import annotations

from meshd.address import NodeAddress
from meshd.router.clusters import LinkView, advise, cluster_signature, is_bridge, rssi_score
from meshd.router.dedup import SeenSet
from meshd.router.frames import Frame, FrameType
from meshd.router.linkrel import MIN_RTO, LinkReliability
from meshd.router.paths import PathTable, seq_newer
from meshd.router.ratelimit import TokenBucket, battery_scale
from meshd.router.routing import battery_penalty
from meshd.router.types import LinkKind

D = NodeAddress(b"d" * 16)
N1, N2 = NodeAddress(b"1" * 16), NodeAddress(b"2" * 16)


def offer(table: PathTable, link: int, cost: float, seq: int, now: float = 0.0) -> bool:
    return table.offer(D, link_id=link, next_hop=N1 if link == 1 else N2, hops=2, cost=cost,
                       seq=seq, seq_valid=True, expires_at=now + 100, now=now)[1]


def test_sequence_numbers_compare_in_serial_arithmetic() -> None:
    assert seq_newer(5, 4) and not seq_newer(4, 5) and not seq_newer(4, 4)
    assert seq_newer(2, 0xFFFFFFF0)  # wrapped around


def test_a_path_is_replaced_only_by_fresher_or_cheaper_information() -> None:
    table = PathTable()
    assert offer(table, 1, 5.0, seq=10)
    assert not offer(table, 2, 9.0, seq=10)  # same freshness, costlier
    assert not offer(table, 2, 1.0, seq=9)  # cheaper but stale: would risk a loop
    assert offer(table, 2, 4.0, seq=10)  # same freshness, cheaper
    assert offer(table, 1, 20.0, seq=11)  # fresher wins even when costlier
    route = table.get(D, now=1.0)
    assert route is not None and route.link_id == 1 and route.seq == 11
    assert [r.dst for r in table.via_link(1)] == [D] and table.via_link(2) == []


def test_paths_expire_and_leave_their_sequence_number_behind() -> None:
    table = PathTable()
    offer(table, 1, 3.0, seq=42)
    assert table.get(D, now=200.0) is None
    assert table.last_seq(D) == 42
    assert len(table) == 0


def test_the_path_table_is_bounded() -> None:
    table = PathTable(capacity=10)
    for i in range(50):
        table.offer(NodeAddress(i.to_bytes(16, "big")), link_id=1, next_hop=N1, hops=1,
                    cost=1.0, seq=1, seq_valid=True, expires_at=1e9, now=0.0)
    assert len(table) == 10
    assert len(table.via_link(1)) == 10


def test_seen_set_forgets_by_age_and_by_count() -> None:
    seen = SeenSet(capacity=3, max_age=10.0)
    assert seen.add("a", now=0.0) and not seen.add("a", now=1.0)
    for key in "bcd":
        seen.add(key, now=2.0)
    assert "a" not in seen and len(seen) == 3
    seen.expire(now=12.5)
    assert len(seen) == 0
    assert seen.add("a", now=13.0)


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=4.0, now=0.0)
    assert [bucket.take(now=0.0) for _ in range(5)] == [True] * 4 + [False]
    assert bucket.take(now=0.5) and not bucket.take(now=0.5)
    assert bucket.tokens <= 4.0


def test_battery_scales_the_relay_budget_and_the_path_cost() -> None:
    assert battery_scale(80, False) == 1.0 and battery_scale(5, True) == 1.0
    assert battery_scale(20, False) < 1.0 and battery_scale(10, False) == 0.1
    assert battery_penalty(50, False) == 0.0
    assert 1.0 <= battery_penalty(20, False) <= 2.0
    assert battery_penalty(10, False) == 10.0 and battery_penalty(10, True) == 0.0


def _frame(i: int) -> Frame:
    return Frame(FrameType.DATA, i.to_bytes(8, "big"), N1, D)


def test_hop_by_hop_retransmits_then_gives_up_and_lowers_the_link_quality() -> None:
    rel = LinkReliability(max_tries=3)
    rel.add_link(7, 1.0)
    assert rel.track(7, _frame(1), b"x", local=True, upstream=None, now=0.0)
    deadline = rel.next_deadline()
    assert deadline is not None and deadline >= MIN_RTO
    resends = failures = 0
    now = 0.0
    while (deadline := rel.next_deadline()) is not None:
        now = deadline
        resend, failed = rel.due(now=now)
        resends += len(resend)
        failures += len(failed)
    assert (resends, failures) == (2, 1)
    assert rel.quality(7) < 0.8
    assert rel.inflight_count() == 0


def test_an_acknowledged_frame_feeds_the_rtt_estimate() -> None:
    rel = LinkReliability()
    rel.add_link(1, 0.5)
    rel.track(1, _frame(2), b"x", local=False, upstream=3, now=10.0)
    item = rel.acked(1, (_frame(2).frame_id, 0), now=10.05)
    assert item is not None and item.upstream == 3
    assert rel.links[1].srtt is not None and abs(rel.links[1].srtt - 0.05) < 1e-9
    assert rel.links[1].rto == MIN_RTO
    assert rel.quality(1) > 0.5
    assert rel.acked(1, (_frame(2).frame_id, 0), now=10.1) is None  # duplicate ACK
    assert rel.next_deadline() is None


def test_per_link_in_flight_is_bounded_with_room_kept_for_own_frames() -> None:
    rel = LinkReliability(max_inflight=4)
    rel.add_link(1, 1.0)
    relayed = [rel.track(1, _frame(i), b"x", local=False, upstream=2, now=0.0) for i in range(6)]
    assert relayed == [True] * 4 + [False] * 2
    assert rel.track(1, _frame(99), b"x", local=True, upstream=None, now=0.0)


def _view(link: int, prefix: bytes, neighbours: set[bytes], *, kind: LinkKind = LinkKind.BLE,
          quality: float = 0.9, battery: int | None = 80) -> LinkView:
    return LinkView(link, prefix, kind, quality, battery, -60, frozenset(neighbours))


def test_cluster_signature_is_the_xor_of_the_node_and_neighbour_hashes() -> None:
    assert cluster_signature(b"\x00\x00\x00\x01", [b"\x00\x00\x00\x03"]) == 2
    assert cluster_signature(b"abcd", []) == int.from_bytes(b"abcd", "big")


def test_a_neighbour_mostly_outside_our_neighbourhood_is_a_bridge() -> None:
    own = frozenset({b"AAAA", b"BBBB", b"CCCC"})
    inside = _view(1, b"AAAA", {b"BBBB", b"CCCC", b"self"})
    outside = _view(2, b"BBBB", {b"XXXX", b"YYYY", b"AAAA"})
    assert not is_bridge(own, b"self", inside)
    assert is_bridge(own, b"self", outside)


def test_link_advice_keeps_the_best_links_and_every_bridge() -> None:
    members = {b"m%03d" % i for i in range(6)}
    views = [_view(i, b"m%03d" % i, members - {b"m%03d" % i}, quality=0.5 + i / 20)
             for i in range(6)]
    views.append(_view(100, b"brdg", {b"far1", b"far2"}, quality=0.1, battery=10))
    views.append(_view(200, b"inet", set(), kind=LinkKind.INET))
    advice = advise(b"self", views, max_links=2)
    kept = {link for link, (keep, _) in advice.items() if keep}
    assert kept == {5, 4, 100, 200}  # two best BLE links, the bridge, the unlimited link
    assert advice[100][1] == "bridge" and advice[0] == (False, "surplus")


def test_rssi_score_follows_the_reference_curve() -> None:
    assert rssi_score(-40) == 1.0 and rssi_score(-100) == 0.0
    assert abs(rssi_score(-70) - 0.7) < 1e-9 and abs(rssi_score(-85) - 0.4) < 1e-9


def test_relay_selection_covers_every_uncovered_two_hop_node_greedily() -> None:
    from meshd.router.relaysel import select_relays

    covered = {b"self", b"A", b"B", b"C", b"D"}
    targets: list[tuple[int, frozenset[bytes] | None]] = [
        (1, frozenset({b"self", b"X", b"Y"})),
        (2, frozenset({b"self", b"Y"})),  # adds nothing beyond link 1
        (3, frozenset({b"self", b"Z"})),
        (4, frozenset({b"self", b"A"})),  # only already-covered nodes
        (5, None),  # unknown neighbourhood: must relay
    ]
    assert select_relays(targets, covered) == {1, 3, 5}
    assert select_relays([(1, frozenset({b"self"}))], covered) == set()
