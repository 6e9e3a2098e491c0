from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.errors import ConfigError
from meshd.sim.mobility import RandomWaypoint
from meshd.sim.topology import (
    Topology,
    build,
    components,
    crossing,
    geometric_edges,
    hop_distances,
    is_connected,
    split_halves,
)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [60, 300])
def test_rgg_is_connected_with_mean_degree_in_range(n: int, seed: int) -> None:
    topo = build("rgg", n, random.Random(seed), degree=8.0)
    assert topo.n == n
    assert is_connected(n, topo.edges)
    assert 6.0 <= topo.mean_degree <= 10.0
    assert topo.radius is not None
    # Every edge is within radio range, and every pair within range is an edge.
    assert set(topo.edges) == set(geometric_edges(topo.positions, topo.radius))


def test_rgg_same_seed_same_graph_other_seed_other_graph() -> None:
    a = build("rgg", 100, random.Random(7))
    b = build("rgg", 100, random.Random(7))
    c = build("rgg", 100, random.Random(8))
    assert a.edges == b.edges and a.positions == b.positions
    assert a.edges != c.edges


@pytest.mark.parametrize(
    ("kind", "n", "edges"), [("line", 10, 9), ("ring", 10, 10), ("grid", 16, 24), ("grid", 10, 13)]
)
def test_regular_topologies(kind: str, n: int, edges: int) -> None:
    topo = build(kind, n, random.Random(0))
    assert len(topo.edges) == edges
    assert is_connected(n, topo.edges)
    assert all(a < b for a, b in topo.edges)


def test_line_hop_distances() -> None:
    topo = build("line", 6, random.Random(0))
    assert hop_distances(6, topo.edges, 0) == [0, 1, 2, 3, 4, 5]


def test_clusters_are_joined_by_pinned_bridges() -> None:
    topo = build("clusters", 120, random.Random(3), n_clusters=4)
    assert is_connected(120, topo.edges)
    assert len(topo.pinned) >= 4
    # Without the bridges the graph falls apart into (at least) the clusters.
    inner = [e for e in topo.edges if e not in set(topo.pinned)]
    assert len(components(120, inner)) >= 4


def test_unknown_topology_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        build("torus", 10, random.Random(0))
    assert info.value.field == "topology"


@pytest.mark.parametrize(
    ("kind", "n", "seed"),
    [("rgg", 200, 1), ("rgg", 500, 2), ("rgg", 80, 5), ("grid", 49, 0), ("ring", 30, 0),
     ("line", 11, 0), ("clusters", 100, 4)],
)
def test_partition_splits_into_exactly_two_components(kind: str, n: int, seed: int) -> None:
    topo = build(kind, n, random.Random(seed))
    right = split_halves(topo)
    cut = set(crossing(topo.edges, right))
    assert cut
    comps = components(n, [e for e in topo.edges if e not in cut])
    assert len(comps) == 2
    sides = [{right[i] for i in comp} for comp in comps]
    assert sorted(len(s) for s in sides) == [1, 1] and sides[0] != sides[1]
    assert min(len(c) for c in comps) >= n // 10  # two real halves, not a stray node


def _brute(points: list[tuple[float, float]], r: float) -> list[tuple[int, int]]:
    return [(i, j) for i, j in itertools.combinations(range(len(points)), 2)
            if math.dist(points[i], points[j]) <= r]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 500), st.floats(0, 500)), max_size=40),
       st.floats(1, 300))
def test_geometric_edges_match_brute_force(points: list[tuple[float, float]], r: float) -> None:
    assert geometric_edges(points, r) == _brute(points, r)


def test_random_waypoint_stays_inside_and_moves_at_bounded_speed() -> None:
    rng = random.Random(1)
    pos = [(rng.uniform(0, 1000), rng.uniform(0, 1000)) for _ in range(50)]
    model = RandomWaypoint(pos, 1000.0, 2.0, random.Random(2))
    before = list(model.positions)
    for _ in range(20):
        model.step(5.0)
    moved = [math.dist(a, b) for a, b in zip(before, model.positions, strict=True)]
    assert all(0 <= x <= 1000 and 0 <= y <= 1000 for x, y in model.positions)
    assert max(moved) <= 1.5 * 2.0 * 100.0 + 1e-6
    assert sum(1 for m in moved if m > 1.0) >= 45


def test_topology_mean_degree() -> None:
    topo = Topology("line", [(0.0, 0.0)] * 3, [(0, 1), (1, 2)], side=1.0)
    assert topo.mean_degree == pytest.approx(4 / 3)


def test_cluster_nodes_move_inside_their_cluster_area() -> None:
    topo = build("clusters", 60, random.Random(2), n_clusters=3)
    assert topo.areas is not None and len(topo.areas) == 60
    model = RandomWaypoint(topo.positions, topo.side, 5.0, random.Random(3), topo.areas)
    for _ in range(50):
        model.step(10.0)
    for (x, y), (x0, y0, x1, y1) in zip(model.positions, topo.areas, strict=True):
        assert x0 - 1e-9 <= x <= x1 + 1e-9 and y0 - 1e-9 <= y <= y1 + 1e-9
