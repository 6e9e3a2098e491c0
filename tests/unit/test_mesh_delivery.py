"""Multi-node scenarios over the lossy in-memory fabric with the real Endpoint."""

from __future__ import annotations

import random
from collections import Counter

from meshd.router.core import MeshCore
from meshd.router.events import (
    DeliveryState,
    DeliveryStateChanged,
    MessageReceived,
    PathChanged,
)
from meshd.testing.memlink import LinkParams, MemFabric, build_mesh, identity_for

NASTY = LinkParams(loss=0.1, duplicate=0.1, reorder=0.2, delay=0.01, jitter=0.02)


def received(fabric: MemFabric, node: int) -> list[MessageReceived]:
    return [e for e in fabric.events[node] if isinstance(e, MessageReceived)]


def states(fabric: MemFabric, node: int) -> dict[bytes, DeliveryState]:
    final: dict[bytes, DeliveryState] = {}
    for event in fabric.events[node]:
        if isinstance(event, DeliveryStateChanged):
            final[event.message_id] = event.state
    return final


def send(fabric: MemFabric, cores: list[MeshCore], src: int, dst: int, payload: bytes) -> bytes:
    message_id = cores[src].send(cores[dst].address, payload, now=fabric.now)
    fabric.kick(src)
    return message_id


def test_five_node_line_delivers_end_to_end_both_ways() -> None:
    fabric, cores = build_mesh(5, [(i, i + 1) for i in range(4)], seed=1, params=NASTY)
    fabric.run_for(1.0)
    forward = [send(fabric, cores, 0, 4, b"to the end %d" % k) for k in range(5)]
    backward = [send(fabric, cores, 4, 0, b"back %d" % k) for k in range(5)]
    fabric.run_for(60.0)
    got = received(fabric, 4)
    assert sorted(e.payload for e in got) == sorted(b"to the end %d" % k for k in range(5))
    assert all(e.src == cores[0].address and e.hops == 3 for e in got)  # 3 relays
    assert sorted(e.payload for e in received(fabric, 0)) == sorted(
        b"back %d" % k for k in range(5)
    )
    assert all(states(fabric, 0)[m] is DeliveryState.DELIVERED for m in forward)
    assert all(states(fabric, 4)[m] is DeliveryState.DELIVERED for m in backward)
    # The relays learned a path by discovery, not by flooding the data.
    assert cores[2].router.stats.tx.get("FLOOD_DATA", 0) == 0
    assert {r.dst for r in cores[0].routes()} >= {cores[4].address}


def test_ring_of_14_with_chords_delivers_every_message_exactly_once() -> None:
    edges = [(i, (i + 1) % 14) for i in range(14)] + [(0, 7), (3, 10), (5, 12)]
    fabric, cores = build_mesh(14, edges, seed=2, params=NASTY)
    fabric.run_for(2.0)
    rng = random.Random(5)
    expected: dict[bytes, tuple[int, int]] = {}
    for k in range(40):
        src, dst = rng.sample(range(14), 2)
        payload = b"m%d" % k
        message_id = send(fabric, cores, src, dst, payload)
        expected[message_id] = (src, dst)
        fabric.run_for(rng.uniform(0.0, 0.5))
    fabric.run_for(120.0)
    counts: Counter[bytes] = Counter()
    for node in range(14):
        for event in received(fabric, node):
            counts[event.message_id] += 1
            assert expected[event.message_id][1] == node
    assert counts == Counter({m: 1 for m in expected})
    for message_id, (src, _) in expected.items():
        assert states(fabric, src)[message_id] is DeliveryState.DELIVERED


def test_a_path_broken_mid_stream_is_repaired() -> None:
    # Two disjoint routes from 0 to 5: 0-1-2-5 and 0-3-4-5.
    edges = [(0, 1), (1, 2), (2, 5), (0, 3), (3, 4), (4, 5)]
    fabric, cores = build_mesh(6, edges, seed=3, params=LinkParams(loss=0.05))
    fabric.run_for(1.0)
    sent = []
    for k in range(10):
        sent.append(send(fabric, cores, 0, 5, b"before %d" % k))
        fabric.run_for(0.5)
    first_hop = next(r.next_hop for r in cores[0].routes() if r.dst == cores[5].address)
    middle = 1 if first_hop == cores[1].address else 3
    fabric.disconnect(middle, middle + 1)  # break the path in use, mid-stream
    for k in range(10):
        sent.append(send(fabric, cores, 0, 5, b"after %d" % k))
        fabric.run_for(0.5)
    fabric.run_for(60.0)
    assert len(received(fabric, 5)) == 20
    assert all(states(fabric, 0)[m] is DeliveryState.DELIVERED for m in sent)
    route = next(r for r in cores[0].routes() if r.dst == cores[5].address)
    assert route.next_hop != cores[middle].address
    lost = [e for e in fabric.events[middle] if isinstance(e, PathChanged) and e.next_hop is None]
    assert lost, "the node at the break invalidated its path"


def test_an_offline_destination_gets_its_messages_through_a_custodian() -> None:
    # sender 0 - relay 1 - relay 2 - destination 3; the destination is away at first.
    fabric, cores = build_mesh(4, [(0, 1), (1, 2), (2, 3)], seed=4,
                               params=LinkParams(loss=0.05))
    fabric.run_for(1.0)
    destination_peers = fabric.take_offline(3)
    sent = [send(fabric, cores, 0, 3, b"while you were out %d" % k) for k in range(3)]
    held = fabric.run_until_true(
        lambda: all(states(fabric, 0).get(m) is DeliveryState.HELD_BY_CUSTODIAN for m in sent),
        timeout=600.0,
    )
    assert held, states(fabric, 0)
    fabric.take_offline(0)  # the sender leaves for good
    fabric.run_for(3600.0)
    assert received(fabric, 3) == []
    fabric.bring_online(3, destination_peers, LinkParams(loss=0.05))
    fabric.run_for(900.0)  # the custodian probes every 300 s
    got = received(fabric, 3)
    assert sorted(e.payload for e in got) == sorted(b"while you were out %d" % k for k in range(3))
    assert all(e.src == cores[0].address for e in got)


def test_ring_with_links_flapping_mid_traffic_still_delivers_exactly_once() -> None:
    ring = [(i, (i + 1) % 12) for i in range(12)]
    chords = [(0, 6), (3, 9), (2, 8)]
    fabric, cores = build_mesh(12, ring + chords, seed=6, params=NASTY)
    fabric.run_for(2.0)
    rng = random.Random(9)
    expected: dict[bytes, int] = {}
    for k in range(30):
        src, dst = rng.sample(range(12), 2)
        expected[send(fabric, cores, src, dst, b"f%d" % k)] = dst
        a, b = rng.choice(ring + chords)
        if fabric.linked(a, b):
            fabric.disconnect(a, b)  # a link breaks under traffic...
        else:
            fabric.connect(a, b, NASTY)  # ...and another comes back
        fabric.run_for(rng.uniform(0.2, 2.0))
    for a, b in ring + chords:  # finally everything heals
        if not fabric.linked(a, b):
            fabric.connect(a, b, NASTY)
    fabric.run_for(900.0)
    counts: Counter[bytes] = Counter()
    for node in range(12):
        for event in received(fabric, node):
            counts[event.message_id] += 1
            assert expected[event.message_id] == node
    assert counts == Counter({m: 1 for m in expected})


def test_custody_survives_a_custodian_restart_through_the_facade() -> None:
    fabric, cores = build_mesh(3, [(0, 1), (1, 2)], seed=13, params=LinkParams(loss=0.05))
    fabric.run_for(1.0)
    peers = fabric.take_offline(2)
    message = send(fabric, cores, 0, 2, b"keep me")
    assert fabric.run_until_true(
        lambda: states(fabric, 0).get(message) is DeliveryState.HELD_BY_CUSTODIAN, timeout=600.0
    )
    records = cores[1].custody_records()
    assert [frame.frame_id for frame, _ in records] == [message]
    # The custodian restarts: a fresh core restored from what the daemon persisted.
    fabric.take_offline(0)
    fabric.take_offline(1)
    reborn = MeshCore(identity_for(1, seed=13), now=fabric.now, rng=random.Random(77))
    reborn.restore_custody(records, now=fabric.now)
    fabric.nodes[1] = reborn
    fabric.bring_online(1, [])
    fabric.bring_online(2, peers)
    fabric.run_for(900.0)
    assert [e.payload for e in received(fabric, 2)] == [b"keep me"]


def test_message_sent_before_the_links_come_up_leaves_when_they_do() -> None:
    # Cold start of a daemon: the app sends before discovery has found any neighbour.
    # Before neighbour_appeared this waited out the discovery back-off and the 30 s
    # unroutable wait (delivery at t=30.25 s for links up at 3-5 s).
    fabric = MemFabric(seed=1)
    cores = [
        MeshCore(identity_for(i, seed=1), now=fabric.now, rng=random.Random(i))
        for i in range(4)
    ]
    for core in cores:
        fabric.add(core)
    send(fabric, cores, 0, 3, b"cold")
    for (a, b), at in zip([(0, 1), (1, 2), (2, 3)], [3.0, 4.0, 5.0], strict=True):
        fabric.run_until(at)
        fabric.connect(a, b)
    fabric.run_until(12.0)
    assert [e.payload for e in received(fabric, 3)] == [b"cold"]
