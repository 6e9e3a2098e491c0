"""Topology generators for the simulator: line, grid, ring, random geometric, clusters.

Every topology places nodes in a plane (metres) so that partitions (cut by position) and
mobility (links recomputed from distances) work on all of them. Generators are pure
functions of their arguments and the ``random.Random`` passed in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from meshd.errors import ConfigError

Edge = tuple[int, int]
Point = tuple[float, float]

TOPOLOGIES = ("line", "grid", "ring", "rgg", "clusters")
_SPACING = 100.0  # metres between neighbours in line/grid/ring
_RGG_ATTEMPTS = 40  # fresh position draws before widening the radius


@dataclass(slots=True)
class Topology:
    """Node positions, links, and (geometric topologies) the radio range."""

    kind: str
    positions: list[Point]
    edges: list[Edge]
    side: float  # the square the nodes live (and move) in
    radius: float | None = None  # radio range; None: links are fixed (line, grid, ring)
    pinned: list[Edge] = field(default_factory=list)  # bridges kept under mobility
    # Per-node area (x0, y0, x1, y1) that mobility keeps the node in; None: the whole square.
    areas: list[tuple[float, float, float, float]] | None = None

    @property
    def n(self) -> int:
        return len(self.positions)

    @property
    def mean_degree(self) -> float:
        return 2.0 * len(self.edges) / self.n if self.n else 0.0


def normalize(edges: Iterable[Edge]) -> list[Edge]:
    """Sorted, deduplicated edges with ``a < b`` and no self-loops."""
    return sorted({(a, b) if a < b else (b, a) for a, b in edges if a != b})


def line(n: int) -> Topology:
    return Topology("line", [(i * _SPACING, 0.0) for i in range(n)],
                    [(i, i + 1) for i in range(n - 1)], side=max(1, n) * _SPACING)


def ring(n: int) -> Topology:
    circumference = n * _SPACING
    r = circumference / (2 * math.pi)
    pos = [(r + r * math.cos(2 * math.pi * i / n), r + r * math.sin(2 * math.pi * i / n))
           for i in range(n)]
    edges = normalize((i, (i + 1) % n) for i in range(n)) if n > 1 else []
    return Topology("ring", pos, edges, side=2 * r + _SPACING)


def grid(n: int) -> Topology:
    """A near-square grid, row-major; the last row may be partial."""
    cols = max(1, math.ceil(math.sqrt(n)))
    pos = [((i % cols) * _SPACING, (i // cols) * _SPACING) for i in range(n)]
    edges: list[Edge] = []
    for i in range(n):
        if (i + 1) % cols and i + 1 < n:
            edges.append((i, i + 1))
        if i + cols < n:
            edges.append((i, i + cols))
    return Topology("grid", pos, normalize(edges), side=cols * _SPACING)


def geometric_edges(positions: Sequence[Point], radius: float) -> list[Edge]:
    """All pairs closer than ``radius``, found through a cell grid (O(n * degree))."""
    cells: dict[tuple[int, int], list[int]] = {}
    for i, (x, y) in enumerate(positions):
        cells.setdefault((int(x // radius), int(y // radius)), []).append(i)
    r2 = radius * radius
    edges: list[Edge] = []
    for (cx, cy), members in cells.items():
        for dx, dy in ((0, 0), (1, -1), (1, 0), (1, 1), (0, 1)):
            other = cells.get((cx + dx, cy + dy))
            if other is None:
                continue
            same = dx == 0 and dy == 0
            for ii, i in enumerate(members):
                xi, yi = positions[i]
                for j in other[ii + 1 :] if same else other:
                    xj, yj = positions[j]
                    if (xi - xj) ** 2 + (yi - yj) ** 2 <= r2:
                        edges.append((i, j) if i < j else (j, i))
    edges.sort()
    return edges


def rgg(n: int, degree: float, rng: random.Random) -> Topology:
    """A connected random geometric graph in a square, mean degree close to ``degree``.

    The radius is tuned on each draw to hit the target mean degree (border nodes have
    fewer neighbours, so the textbook ``pi r^2 n / A`` undershoots); disconnected draws
    are thrown away, and after ``_RGG_ATTEMPTS`` failures the radius grows by 3 % per try.
    """
    if n < 2:
        return Topology("rgg", [(0.0, 0.0)] * n, [], side=_SPACING, radius=_SPACING)
    side = math.sqrt(n) * _SPACING
    widen = 1.0
    for attempt in range(10 * _RGG_ATTEMPTS):
        pos = [(rng.uniform(0, side), rng.uniform(0, side)) for _ in range(n)]
        radius = _radius_for_degree(pos, side, degree) * widen
        edges = geometric_edges(pos, radius)
        if is_connected(n, edges):
            return Topology("rgg", pos, edges, side=side, radius=radius)
        if attempt >= _RGG_ATTEMPTS:
            widen *= 1.03
    raise ConfigError(f"could not draw a connected graph of {n} nodes", field="degree")


def _radius_for_degree(pos: Sequence[Point], side: float, degree: float) -> float:
    n = len(pos)
    radius = side * math.sqrt(degree / (math.pi * max(1, n - 1)))
    for _ in range(4):
        actual = 2.0 * len(geometric_edges(pos, radius)) / n
        if actual <= 0:
            radius *= 2
            continue
        radius *= math.sqrt(degree / actual)
    return radius


def clusters(n: int, k: int, degree: float, rng: random.Random) -> Topology:
    """``k`` dense geometric clusters on a ring of centres, joined by bridge links.

    Consecutive clusters are bridged by their closest pair of nodes (pinned links that
    survive mobility, like a long-range link), and a few random extra bridges make the
    cluster graph more than a single cycle.
    """
    k = max(1, min(k, n))
    sizes = [n // k + (1 if c < n % k else 0) for c in range(k)]
    cluster_side = math.sqrt(max(sizes)) * _SPACING
    centre_r = cluster_side * k / (2 * math.pi) + cluster_side
    side = 2 * centre_r + 2 * cluster_side
    positions: list[Point] = []
    areas: list[tuple[float, float, float, float]] = []
    members: list[list[int]] = []
    edges: list[Edge] = []
    radius = 0.0
    for c, size in enumerate(sizes):
        angle = 2 * math.pi * c / k
        ox = side / 2 + centre_r * math.cos(angle) - cluster_side / 2
        oy = side / 2 + centre_r * math.sin(angle) - cluster_side / 2
        blob = rgg(size, min(degree, max(1.0, size - 1.0)), rng)
        scale = cluster_side / blob.side
        base = len(positions)
        positions.extend((ox + x * scale, oy + y * scale) for x, y in blob.positions)
        areas.extend([(ox, oy, ox + cluster_side, oy + cluster_side)] * size)
        members.append(list(range(base, base + size)))
        edges.extend((a + base, b + base) for a, b in blob.edges)
        radius = max(radius, (blob.radius or 0.0) * scale)
    pinned: list[Edge] = []
    if k > 1:
        pairs = [(c, (c + 1) % k) for c in range(k if k > 2 else 1)]
        pairs += [(rng.randrange(k), rng.randrange(k)) for _ in range(k // 4)]
        for c1, c2 in pairs:
            if c1 != c2:
                pinned.append(_closest_pair(positions, members[c1], members[c2]))
    topo = Topology("clusters", positions, normalize(edges + pinned), side=side,
                    radius=radius or None, pinned=normalize(pinned), areas=areas)
    if not is_connected(n, topo.edges):
        raise ConfigError("cluster graph is not connected", field="clusters")
    return topo


def _closest_pair(pos: Sequence[Point], left: list[int], right: list[int]) -> Edge:
    def dist2(e: Edge) -> float:
        (xa, ya), (xb, yb) = pos[e[0]], pos[e[1]]
        return (xa - xb) ** 2 + (ya - yb) ** 2

    best = min(((a, b) for a in left for b in right), key=dist2)
    return (best[0], best[1]) if best[0] < best[1] else (best[1], best[0])


def build(kind: str, n: int, rng: random.Random, *, degree: float = 8.0,
          n_clusters: int = 0) -> Topology:
    """Build the topology named ``kind`` (one of ``TOPOLOGIES``)."""
    if n < 2:
        raise ConfigError("a mesh needs at least 2 nodes", field="nodes")
    if kind == "line":
        return line(n)
    if kind == "ring":
        return ring(n)
    if kind == "grid":
        return grid(n)
    if kind == "rgg":
        return rgg(n, degree, rng)
    if kind == "clusters":
        return clusters(n, n_clusters or max(2, n // 25), degree, rng)
    raise ConfigError(f"unknown topology {kind!r}; one of {', '.join(TOPOLOGIES)}",
                      field="topology")


# --- graph helpers ----------------------------------------------------------------------

def adjacency(n: int, edges: Iterable[Edge]) -> list[list[int]]:
    adj: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    return adj


def components(n: int, edges: Iterable[Edge], nodes: Iterable[int] | None = None
               ) -> list[list[int]]:
    """Connected components of the subgraph induced by ``nodes`` (all by default)."""
    allowed = [True] * n if nodes is None else [False] * n
    if nodes is not None:
        for i in nodes:
            allowed[i] = True
    adj = adjacency(n, ((a, b) for a, b in edges if allowed[a] and allowed[b]))
    seen = [False] * n
    comps: list[list[int]] = []
    for start in range(n):
        if seen[start] or not allowed[start]:
            continue
        seen[start] = True
        comp, stack = [], [start]
        while stack:
            i = stack.pop()
            comp.append(i)
            for j in adj[i]:
                if not seen[j]:
                    seen[j] = True
                    stack.append(j)
        comps.append(sorted(comp))
    return comps


def is_connected(n: int, edges: Iterable[Edge]) -> bool:
    return n <= 1 or len(components(n, edges)) == 1


def hop_distances(n: int, edges: Iterable[Edge], src: int) -> list[int]:
    """BFS hop count from ``src`` (-1 where unreachable)."""
    adj = adjacency(n, edges)
    dist = [-1] * n
    dist[src] = 0
    frontier = [src]
    while frontier:
        nxt = []
        for i in frontier:
            for j in adj[i]:
                if dist[j] < 0:
                    dist[j] = dist[i] + 1
                    nxt.append(j)
        frontier = nxt
    return dist


def split_halves(topo: Topology, edges: Sequence[Edge] | None = None) -> list[bool]:
    """Cut a connected graph into two connected halves: ``side[i]`` is True on the right.

    Nodes are split at the median x coordinate; any piece that the cut leaves stranded
    on one side is moved to the other (it must touch it, the whole graph being
    connected), so each side ends up as exactly one component.
    """
    es = list(topo.edges if edges is None else edges)
    n = topo.n
    order = sorted(range(n), key=lambda i: (topo.positions[i][0], topo.positions[i][1], i))
    right = [False] * n
    for i in order[n // 2 :]:
        right[i] = True
    for side in (False, True, False):
        comps = components(n, es, [i for i in range(n) if right[i] == side])
        comps.sort(key=len, reverse=True)
        for comp in comps[1:]:
            for i in comp:
                right[i] = not side
    return right


def crossing(edges: Iterable[Edge], right: Sequence[bool]) -> list[Edge]:
    return [(a, b) for a, b in edges if right[a] != right[b]]
