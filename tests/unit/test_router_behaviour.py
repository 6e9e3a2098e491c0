"""Router behaviour in small meshes: battery-aware paths, pruned path requests, identity
learning, announce extensions, link advice."""

from __future__ import annotations

from meshd.router.core import CoreConfig, MeshCore
from meshd.router.events import (
    DeliveryState,
    DeliveryStateChanged,
    LinkAdviceChanged,
    MessageReceived,
    NeighbourDown,
    NeighbourUp,
    PeerIdentityLearned,
)
from meshd.router.routing import RouterConfig
from meshd.router.types import LinkKind
from meshd.testing.memlink import LinkParams, MemFabric, build_mesh


def route_via(core: MeshCore, dst: MeshCore) -> object:
    return next((r.next_hop for r in core.routes() if r.dst == dst.address), None)


def delivered(fabric: MemFabric, node: int) -> int:
    return sum(1 for e in fabric.events[node]
               if isinstance(e, DeliveryStateChanged) and e.state is DeliveryState.DELIVERED)


def test_a_low_battery_relay_is_avoided_when_there_is_an_alternative() -> None:
    for low in (1, 2):
        fabric, cores = build_mesh(4, [(0, 1), (1, 3), (0, 2), (2, 3)], seed=20 + low)
        cores[low].set_battery(10, charging=False, now=fabric.now)
        cores[3 - low].set_battery(90, charging=False, now=fabric.now)
        fabric.kick(low)
        fabric.kick(3 - low)
        fabric.run_for(1.0)
        cores[0].send(cores[3].address, b"x", now=fabric.now)
        fabric.kick(0)
        fabric.run_for(10.0)
        assert delivered(fabric, 0) == 1
        assert route_via(cores[0], cores[3]) == cores[3 - low].address


def test_a_low_battery_node_still_sends_its_own_messages_unthrottled() -> None:
    config = CoreConfig(router=RouterConfig(relay_rate=1.0, relay_burst=1.0))
    fabric, cores = build_mesh(3, [(0, 1), (1, 2)], seed=30, config=config)
    cores[0].set_battery(3, charging=False, now=fabric.now)
    for k in range(30):
        cores[0].send(cores[1].address, b"own %d" % k, now=fabric.now)
    fabric.kick(0)
    fabric.run_for(30.0)
    assert len([e for e in fabric.events[1] if isinstance(e, MessageReceived)]) == 30
    assert delivered(fabric, 0) == 30


def test_path_requests_are_not_resent_to_neighbours_already_covered() -> None:
    # A 5-clique (0..4) with a tail 4-5: discovering 5 from 0 costs 4 + 1 request sends
    # (a plain flood would cost 4 + 4*4 + 1).
    edges = [(a, b) for a in range(5) for b in range(a + 1, 5)] + [(4, 5)]
    fabric, cores = build_mesh(6, edges, seed=40)
    fabric.run_for(10.0)  # one re-announce round: everyone knows its neighbours' neighbours
    cores[0].send(cores[5].address, b"far", now=fabric.now)
    fabric.kick(0)
    fabric.run_for(5.0)
    assert delivered(fabric, 0) == 1
    requests = sum(c.router.stats.tx.get("PATH_REQUEST", 0) for c in cores)
    assert requests == 5
    # Only node 4 reaches beyond the clique, so it alone was asked to relay.
    assert [c.router.stats.tx.get("PATH_REQUEST", 0) for c in cores] == [4, 0, 0, 0, 1, 0]


def test_discovery_still_succeeds_with_stale_neighbour_lists() -> None:
    # Sent right after the links came up, before anyone announced its full neighbourhood:
    # relay selection may pick wrongly, the full-flood retry finds the path anyway.
    edges = [(a, b) for a in range(5) for b in range(a + 1, 5)] + [(4, 5)]
    fabric, cores = build_mesh(6, edges, seed=41)
    fabric.run_for(0.5)
    cores[0].send(cores[5].address, b"early", now=fabric.now)
    fabric.kick(0)
    fabric.run_for(10.0)
    assert delivered(fabric, 0) == 1


def test_identities_are_learned_from_neighbours_and_from_path_replies() -> None:
    fabric, cores = build_mesh(4, [(0, 1), (1, 2), (2, 3)], seed=50)
    fabric.run_for(1.0)
    learned = {e.address for e in fabric.events[0] if isinstance(e, PeerIdentityLearned)}
    assert learned == {cores[1].address}
    assert cores[0].public_identity_of(cores[3].address) is None
    cores[0].send(cores[3].address, b"hello", now=fabric.now)
    fabric.kick(0)
    fabric.run_for(5.0)
    assert cores[0].public_identity_of(cores[3].address) == cores[3].public_identity_of(
        cores[3].address)
    assert cores[3].public_identity_of(cores[0].address) is not None  # from the request
    assert any(isinstance(e, NeighbourUp) for e in fabric.events[0])


def test_announce_extensions_reach_the_neighbours() -> None:
    fabric, cores = build_mesh(2, [(0, 1)], seed=60)
    fabric.run_for(1.0)
    cores[0].set_announce_extensions(b"key-package", now=fabric.now)
    fabric.kick(0)
    fabric.run_for(1.0)
    extensions = [e.extensions for e in fabric.events[1]
                  if isinstance(e, PeerIdentityLearned) and e.address == cores[0].address]
    assert extensions == [b"", b"key-package"]


def test_ble_link_advice_keeps_the_best_links_and_bridges() -> None:
    config = CoreConfig(router=RouterConfig(max_links=2, announce_interval=20.0))
    hub_edges = [(0, i) for i in range(1, 7)]
    # 1..5 form a tight cluster around the hub; 6 leads to a far cluster 7, 8.
    cluster_edges = [(a, b) for a in range(1, 6) for b in range(a + 1, 6)]
    fabric, cores = build_mesh(9, [], seed=70, config=config)
    ble = LinkParams(kind=LinkKind.BLE, rssi=-60)
    for a, b in hub_edges + cluster_edges + [(6, 7), (6, 8), (7, 8)]:
        fabric.connect(a, b, ble)
    fabric.run_for(60.0)
    advice = {n.address: n.keep for n in cores[0].neighbours()}
    assert advice[cores[6].address] is True  # the bridge
    assert sum(advice.values()) == 3  # two best-scored + the bridge
    dropped = [e for e in fabric.events[0] if isinstance(e, LinkAdviceChanged) and not e.keep]
    assert len(dropped) == 3 and all(e.reason == "surplus" for e in dropped)
    assert len({n.cluster_id for n in cores[0].neighbours()}) > 1


def test_link_down_reports_the_neighbour_and_reroutes() -> None:
    fabric, cores = build_mesh(3, [(0, 1), (1, 2), (0, 2)], seed=80)
    fabric.run_for(1.0)
    fabric.disconnect(0, 2)
    assert any(isinstance(e, NeighbourDown) and e.peer == cores[2].address
               for e in fabric.events[0])
    cores[0].send(cores[2].address, b"around", now=fabric.now)
    fabric.kick(0)
    fabric.run_for(10.0)
    assert delivered(fabric, 0) == 1
    assert route_via(cores[0], cores[2]) == cores[1].address


def test_unchanged_announces_are_sent_rarely_and_changes_promptly() -> None:
    config = CoreConfig(announce_interval=10.0)
    fabric, cores = build_mesh(2, [(0, 1)], seed=90, config=config)
    fabric.run_for(5.0)
    start = cores[0].router.stats.tx.get("ANNOUNCE", 0)
    fabric.run_for(45.0)  # ~4 intervals, nothing changed
    assert cores[0].router.stats.tx.get("ANNOUNCE", 0) - start <= 1
    cores[0].set_battery(20, charging=False, now=fabric.now)  # crosses 30 %: announce now
    fabric.kick(0)
    fabric.run_for(0.5)
    assert cores[0].router.stats.tx.get("ANNOUNCE", 0) - start >= 1
    assert [n.battery for n in cores[1].neighbours()] == [20]
