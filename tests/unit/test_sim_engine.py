from __future__ import annotations

import random
from typing import Any

import pytest

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity, PublicIdentity
from meshd.router.events import CoreEvent, LinkId, NeighbourUp
from meshd.router.types import LinkInfo
from meshd.sim.engine import Engine, LinkParams, SimCore
from meshd.sim.metrics import percentile
from meshd.sim.scenario import Scenario, run_strategy

_WALL = ("wall_s", "events_per_s", "peak_rss_mb")


class ScriptedCore:
    """A core that sends what the test tells it to and records what it receives."""

    def __init__(self, ident: Identity) -> None:
        self.address = ident.address
        self.links: dict[LinkId, NodeAddress] = {}
        self.received: list[tuple[float, LinkId, bytes]] = []
        self.timers: list[float] = []
        self.deadline: float | None = None
        self.out: list[tuple[LinkId, bytes]] = []
        self.events: list[CoreEvent] = []

    def link_up(self, link_id: LinkId, peer: PublicIdentity, info: LinkInfo, *,
                now: float) -> None:
        self.links[link_id] = peer.address
        self.events.append(NeighbourUp(link_id, peer.address))

    def link_down(self, link_id: LinkId, *, now: float) -> None:
        del self.links[link_id]

    def receive(self, link_id: LinkId, data: bytes, *, now: float) -> None:
        self.received.append((now, link_id, data))

    def send(self, dst: NodeAddress, payload: bytes, *, now: float,
             lifetime: float | None = None, message_id: bytes | None = None) -> bytes:
        return b"\x00" * 8

    def set_battery(self, level: int, *, charging: bool, now: float) -> None:
        pass

    def handle_timer(self, *, now: float) -> None:
        self.timers.append(now)
        self.deadline = None

    def frames_to_send(self) -> list[tuple[LinkId, bytes]]:
        out, self.out = self.out, []
        return out

    def next_event(self) -> CoreEvent | None:
        return self.events.pop(0) if self.events else None

    def next_deadline(self) -> float | None:
        return self.deadline


def _pair(params: LinkParams) -> tuple[Engine, list[ScriptedCore], list[tuple[int, Any]]]:
    idents = [Identity.from_seed(bytes([i]) * 64) for i in range(3)]
    cores = [ScriptedCore(i) for i in idents]
    seen: list[tuple[int, Any]] = []
    sim_cores: list[SimCore] = list(cores)
    engine = Engine(sim_cores, [i.public for i in idents], params, random.Random(1),
                    lambda node, ev: seen.append((node, ev)))
    engine.connect(0, 1)
    return engine, cores, seen


def test_every_link_send_is_counted_by_type_and_serialized() -> None:
    engine, cores, seen = _pair(LinkParams(loss=0.0, latency=0.01, bandwidth=1000.0))
    assert [node for node, _ in seen] == [0, 1]  # NeighbourUp events reach the sink
    (link_id,) = cores[0].links
    frames = [bytes([1, 0x01]) + bytes(98), bytes([1, 0x03]) + bytes(98),
              bytes([1, 0x40]) + bytes(48)]
    cores[0].out.extend((link_id, f) for f in frames)
    engine.flush(0)
    engine.run(10.0)
    c = engine.counters
    assert c.tx_total == 3
    assert (c.tx_by_type[0x01], c.tx_by_type[0x03], c.tx_by_type[0x40]) == (1, 1, 1)
    assert c.bytes_by_type[0x40] == 50
    # One FIFO queue per direction: 100 B at 1000 B/s takes 0.1 s, then 10 ms latency.
    times = [round(t, 6) for t, _, _ in cores[1].received]
    assert times == [0.11, 0.21, 0.26]
    assert [d for _, _, d in cores[1].received] == frames


def test_loss_counts_the_transmission_but_drops_the_frame() -> None:
    engine, cores, _ = _pair(LinkParams(loss=0.5, latency=0.0, bandwidth=0.0))
    (link_id,) = cores[0].links
    cores[0].out.extend((link_id, bytes([1, 2, i % 256])) for i in range(1000))
    engine.flush(0)
    engine.run(1.0)
    got = len(cores[1].received)
    assert engine.counters.tx_total == 1000
    assert engine.counters.drops["loss"] == 1000 - got
    assert 400 < got < 600


def test_queue_limit_tail_drops_without_counting_a_transmission() -> None:
    engine, cores, _ = _pair(LinkParams(latency=0.0, bandwidth=100.0, queue_limit=1.0))
    (link_id,) = cores[0].links
    cores[0].out.extend((link_id, bytes([1, 1]) + bytes(48)) for _ in range(10))
    engine.flush(0)  # 0.5 s each: the third frame would wait 1.0 s, the fourth 1.5 s
    engine.run(100.0)
    assert engine.counters.tx_total == 3
    assert engine.counters.drops["queue"] == 7
    assert len(cores[1].received) == 3


def test_frames_in_flight_are_lost_when_the_link_goes_down() -> None:
    engine, cores, _ = _pair(LinkParams(latency=1.0, bandwidth=0.0))
    (link_id,) = cores[0].links
    cores[0].out.append((link_id, bytes([1, 1])))
    engine.flush(0)
    engine.at(0.5, lambda: engine.disconnect(0, 1))
    engine.run(5.0)
    assert cores[1].received == []
    assert engine.counters.drops["link_down"] == 1
    assert cores[0].links == {} and cores[1].links == {}


def test_timer_fires_at_the_deadline_and_earlier_deadlines_win() -> None:
    engine, cores, _ = _pair(LinkParams())
    cores[2].deadline = 5.0
    engine.flush(2)
    cores[2].deadline = 3.0
    engine.flush(2)
    engine.run(10.0)
    assert cores[2].timers == [3.0]  # the 5.0 entry was superseded, then cleared


def test_set_edges_applies_the_difference() -> None:
    engine, _, _ = _pair(LinkParams())
    assert engine.set_edges([(1, 2), (0, 2)]) == (1, 2)
    assert engine.edges == [(0, 2), (1, 2)]


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([3.0], 95) == 3.0
    assert percentile([], 50) is None


def _tiny(seed: int) -> dict[str, Any]:
    sc = Scenario(nodes=30, topology="rgg", degree=6, loss=0.05, messages=30, pairs=6,
                  duration=20.0, drain=120.0, seed=seed)
    result = run_strategy(sc, "flood")
    return {k: v for k, v in result.items() if k not in _WALL}


def test_same_seed_same_results_other_seed_other_results() -> None:
    first, second = _tiny(5), _tiny(5)
    assert first == second
    assert first["tx_total"] > 0 and first["delivered"] > 0
    assert _tiny(6) != first


def test_partition_window_and_mobility_change_links() -> None:
    sc = Scenario(nodes=40, topology="rgg", degree=7, messages=20, pairs=5, warmup=5,
                  duration=30.0, drain=60.0, partition=(10.0, 40.0), cross_partition=True,
                  mobility=2.0, mobility_interval=5.0, seed=3)
    result = run_strategy(sc, "flood")
    assert result["link_downs"] > 0 and result["link_ups"] > 0
    report = result["partition"]
    assert report["window"] == [10.0, 40.0]
    assert report["sent"] > 0


@pytest.mark.parametrize(("field", "kwargs"), [
    ("loss", {"loss": 1.5}), ("nodes", {"nodes": 1}), ("partition", {"partition": (5.0, 1.0)}),
    ("mobility", {"topology": "grid", "mobility": 1.0}), ("pairs", {"pairs": 0}),
])
def test_bad_scenarios_name_the_field(field: str, kwargs: dict[str, Any]) -> None:
    from meshd.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        Scenario(**kwargs).validate()
    assert info.value.field == field
