"""A simulation scenario: topology, traffic, impairments, and the strategy under test.

All randomness descends from one ``random.Random(seed)``: the sub-generators (topology,
traffic, identities, batteries, link loss, mobility, per-core) are drawn from it in a
fixed order that does not depend on the strategy, so ``meshd`` and ``flood`` runs with
one seed see the same graph, the same identities and the same messages at the same times.
"""

from __future__ import annotations

import functools
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from meshd.crypto.identity import Identity
from meshd.errors import ConfigError
from meshd.router.events import CoreEvent, DeliveryStateChanged
from meshd.sim.engine import Engine, LinkParams, SimCore
from meshd.sim.flood import FloodConfig, FloodCore
from meshd.sim.metrics import MessageLog, summarize
from meshd.sim.mobility import RandomWaypoint
from meshd.sim.topology import (
    TOPOLOGIES,
    Edge,
    Topology,
    build,
    crossing,
    geometric_edges,
    normalize,
    split_halves,
)

STRATEGIES = ("meshd", "flood")
CoreFactory = Callable[[Identity, random.Random], SimCore]


@dataclass(frozen=True, slots=True)
class Scenario:
    """Everything a run depends on besides the strategy. Times are virtual seconds."""

    nodes: int = 100
    topology: str = "rgg"
    degree: float = 8.0
    clusters: int = 0
    loss: float = 0.0
    latency: float = 0.005
    bandwidth: float = 125_000.0
    queue_limit: float = 2.0
    mobility: float = 0.0  # mean speed, m/s (random waypoint); 0 = static
    mobility_interval: float = 5.0
    partition: tuple[float, float] | None = None
    cross_partition: bool = False  # every conversation straddles the partition cut
    battery: str = "random"
    messages: int = 100
    pairs: int = 10
    size: int = 256
    warmup: float = 10.0
    duration: float = 600.0
    drain: float = 960.0  # covers the flood's whole retry schedule (~921 s)
    lifetime: float | None = None
    flood_ttl: int | None = None  # override the reference's 8/5 TTL (sensitivity runs)
    seed: int = 1

    def validate(self) -> None:
        checks: list[tuple[bool, str, str]] = [
            (self.nodes >= 2, "nodes", "at least 2"),
            (self.topology in TOPOLOGIES, "topology", f"one of {', '.join(TOPOLOGIES)}"),
            (self.topology not in ("rgg", "clusters") or 1.0 <= self.degree <= self.nodes - 1,
             "degree", "between 1 and nodes - 1"),
            (0.0 <= self.loss < 1.0, "loss", "in [0, 1)"),
            (self.latency >= 0, "latency", "not negative"),
            (self.bandwidth >= 0, "bandwidth", "not negative (0 = infinite)"),
            (self.queue_limit > 0, "queue_limit", "positive"),
            (self.mobility >= 0, "mobility", "not negative"),
            (self.mobility == 0 or self.topology in ("rgg", "clusters"), "mobility",
             "only for the geometric topologies rgg and clusters"),
            (self.mobility_interval > 0, "mobility_interval", "positive"),
            (self.battery in ("random", "full"), "battery", "'random' or 'full'"),
            (self.messages >= 0, "messages", "not negative"),
            (1 <= self.pairs <= self.nodes * (self.nodes - 1), "pairs",
             "between 1 and nodes * (nodes - 1)"),
            (self.pairs <= max(1, self.messages), "pairs", "at most the number of messages"),
            (8 <= self.size <= 60_000, "size", "between 8 and 60000 bytes"),
            (self.warmup >= 0 and self.duration >= 0 and self.drain >= 0, "duration",
             "warmup, duration and drain not negative"),
            (self.lifetime is None or self.lifetime > 0, "lifetime", "positive"),
            (self.flood_ttl is None or 1 <= self.flood_ttl <= FloodConfig().ttl_cap,
             "flood_ttl", f"between 1 and the reference's cap {FloodConfig().ttl_cap}"),
            (not self.cross_partition or self.partition is not None, "cross_partition",
             "needs --partition"),
        ]
        if self.partition is not None:
            start, end = self.partition
            checks.append((0 <= start < end, "partition", "START:END with 0 <= START < END"))
        for ok, name, what in checks:
            if not ok:
                raise ConfigError(f"must be {what}", field=name)


def make_core_factory(strategy: str, sc: Scenario | None = None) -> CoreFactory:
    """The constructor of one node for ``strategy`` ("meshd": the real MeshCore)."""
    if strategy == "flood":
        ttl = sc.flood_ttl if sc is not None else None
        cfg = FloodConfig() if ttl is None else FloodConfig(max_ttl=ttl, dense_ttl=ttl)
        return lambda ident, rng: FloodCore(ident, now=0.0, rng=rng, config=cfg)
    if strategy == "meshd":
        from meshd.router.core import MeshCore

        return lambda ident, rng: MeshCore(ident, now=0.0, rng=rng)
    raise ConfigError(f"unknown strategy {strategy!r}; one of meshd, flood, both",
                      field="strategy")


class _Run:
    """One strategy over one scenario: builds the world, schedules, collects."""

    def __init__(self, sc: Scenario, strategy: str, factory: CoreFactory) -> None:
        self.sc = sc
        self.strategy = strategy
        master = random.Random(sc.seed)
        seeds = [master.getrandbits(64) for _ in range(7)]
        topo_rng, traffic_rng, id_rng, battery_rng, link_rng, mob_rng, core_rng = (
            random.Random(s) for s in seeds)
        self.topo: Topology = build(sc.topology, sc.nodes, topo_rng, degree=sc.degree,
                                    n_clusters=sc.clusters)
        self.base_edges: list[Edge] = list(self.topo.edges)
        idents = [Identity.from_seed(id_rng.randbytes(64)) for _ in range(sc.nodes)]
        self.addresses = [ident.address for ident in idents]
        cores = [factory(ident, random.Random(core_rng.getrandbits(64))) for ident in idents]
        params = LinkParams(sc.loss, sc.latency, sc.bandwidth, sc.queue_limit)
        self.log = MessageLog()
        self.engine = Engine(cores, [i.public for i in idents], params, link_rng, self._sink)
        self.right: list[bool] | None = None  # partition sides while partitioned
        self.link_changes = [0, 0]
        for i, core in enumerate(cores):
            level = battery_rng.randint(5, 100) if sc.battery == "random" else 100
            core.set_battery(level, charging=False, now=0.0)
            self.engine.flush(i)
        self.engine.set_edges(self.base_edges)
        self._plan_traffic(traffic_rng)
        self._plan_impairments(mob_rng)

    # --- planning ---------------------------------------------------------------
    def _plan_traffic(self, rng: random.Random) -> None:
        sc, n = self.sc, self.sc.nodes
        pairs: list[tuple[int, int]] = []
        taken: set[tuple[int, int]] = set()
        right = split_halves(self.topo) if sc.cross_partition else None
        while len(pairs) < sc.pairs:
            s, d = rng.randrange(n), rng.randrange(n)
            if s == d or (s, d) in taken or (right is not None and right[s] == right[d]):
                continue
            taken.add((s, d))
            pairs.append((s, d))
        plan: list[tuple[float, int, int]] = []
        for k in range(sc.messages):
            s, d = pairs[k % sc.pairs]
            plan.append((sc.warmup + rng.uniform(0.0, sc.duration), s, d))
        plan.sort()
        for t, s, d in plan:
            k = self.log.add(s, d, t)
            self.engine.at(t, functools.partial(self._send, k))
        self.last_send = plan[-1][0] if plan else 0.0

    def _plan_impairments(self, rng: random.Random) -> None:
        sc = self.sc
        if sc.partition is not None:
            start, end = sc.partition
            self.engine.at(start, self._cut)
            self.engine.at(end, self._heal)
        if sc.mobility > 0:
            model = RandomWaypoint(self.topo.positions, self.topo.side, sc.mobility, rng,
                                   self.topo.areas)

            def tick() -> None:
                model.step(sc.mobility_interval)
                assert self.topo.radius is not None
                self.base_edges = normalize(
                    geometric_edges(model.positions, self.topo.radius) + self.topo.pinned)
                self._apply_edges()
                self.engine.at(self.engine.now + sc.mobility_interval, tick)

            self.engine.at(sc.mobility_interval, tick)

    def _apply_edges(self) -> None:
        edges = self.base_edges
        if self.right is not None:
            cut = set(crossing(edges, self.right))
            edges = [e for e in edges if e not in cut]
        downs, ups = self.engine.set_edges(edges)
        self.link_changes[0] += downs
        self.link_changes[1] += ups

    def _cut(self) -> None:
        self.right = split_halves(self.topo, self.engine.edges)
        self._apply_edges()

    def _heal(self) -> None:
        self.right = None
        self._apply_edges()

    # --- running ----------------------------------------------------------------
    def _send(self, k: int) -> None:
        src, dst = self.log.src[k], self.log.dst[k]
        payload = k.to_bytes(4, "big") + bytes(self.sc.size - 4)
        core = self.engine.cores[src]
        mid = core.send(self.addresses[dst], payload, now=self.engine.now,
                        lifetime=self.sc.lifetime)
        self.log.bind(k, mid)
        self.engine.flush(src)
        self._check_done()

    def _sink(self, node: int, event: CoreEvent) -> None:
        self.log.on_event(node, event, self.engine.now)
        if isinstance(event, DeliveryStateChanged):
            self._check_done()

    def _check_done(self) -> None:
        if self.log.outstanding == 0 and self.log.sent == len(self.log.src):
            self.engine.stopped = True

    def run(self) -> dict[str, Any]:
        sc = self.sc
        started = time.perf_counter()
        end = sc.warmup + sc.duration + sc.drain
        if sc.partition is not None:
            end = max(end, sc.partition[1] + sc.drain)
        self.engine.run(end)
        wall = time.perf_counter() - started
        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = summarize(self.log, self.engine.counters, strategy=self.strategy,
                           nodes=sc.nodes, topology=sc.topology,
                           mean_degree=self.topo.mean_degree, loss=sc.loss,
                           virtual_s=self.engine.now, wall_s=wall, seed=sc.seed)
        result["peak_rss_mb"] = round(rss_kb / 1024.0, 1)
        result["link_downs"], result["link_ups"] = self.link_changes
        if self.strategy == "flood":
            result["flood_ttl"] = sc.flood_ttl or "reference (8, 5 at degree >= 6)"
            dropped: dict[str, int] = {}
            for core in self.engine.cores:
                for reason, count in getattr(core, "dropped", {}).items():
                    dropped[reason] = dropped.get(reason, 0) + count
            result["relay_drops"] = dict(sorted(dropped.items()))
        if sc.partition is not None:
            life = sc.lifetime if sc.lifetime is not None else FloodConfig().lifetime
            result["partition"] = self.log.window_report(*sc.partition, life)
        return result


def run_strategy(sc: Scenario, strategy: str,
                 factory: CoreFactory | None = None) -> dict[str, Any]:
    """Run ``sc`` with one strategy and return its figures (one JSON object)."""
    sc.validate()
    return _Run(sc, strategy, factory or make_core_factory(strategy, sc)).run()


def compare(meshd: dict[str, Any], flood: dict[str, Any]) -> dict[str, Any]:
    """Both results nested, with meshd/flood transmission ratio."""
    a, b = meshd.get("tx_per_delivered"), flood.get("tx_per_delivered")
    ratio = round(a / b, 4) if isinstance(a, float) and isinstance(b, float) and b else None
    return {"meshd": meshd, "flood": flood, "tx_ratio": ratio}
