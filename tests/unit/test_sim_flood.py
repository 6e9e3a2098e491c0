from __future__ import annotations

import dataclasses
import random

import pytest

from meshd.crypto.identity import Identity
from meshd.router.events import (
    CoreEvent,
    DeliveryState,
    DeliveryStateChanged,
    FrameRejected,
    MessageReceived,
)
from meshd.router.frames import Frame, FrameFlags, FrameType, decode_frame
from meshd.router.types import LinkInfo, LinkKind
from meshd.sim.engine import Engine, LinkParams, SimCore
from meshd.sim.flood import FloodConfig, FloodCore, _Seen
from meshd.sim.topology import build


class Net:
    """FloodCores on a topology, with every core event recorded per node."""

    def __init__(self, kind: str, n: int, *, loss: float = 0.0,
                 config: FloodConfig | None = None, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.idents = [Identity.from_seed(rng.randbytes(64)) for _ in range(n)]
        self.cores = [FloodCore(i, now=0.0, rng=random.Random(rng.getrandbits(32)),
                                config=config) for i in self.idents]
        self.events: list[list[CoreEvent]] = [[] for _ in range(n)]
        cores: list[SimCore] = list(self.cores)
        self.engine = Engine(cores, [i.public for i in self.idents],
                             LinkParams(loss=loss), random.Random(seed),
                             lambda node, ev: self.events[node].append(ev))
        self.engine.set_edges(build(kind, n, random.Random(seed)).edges)

    def send(self, src: int, dst: int, at: float, payload: bytes = b"hello") -> None:
        def go() -> None:
            self.cores[src].send(self.idents[dst].address, payload, now=self.engine.now)
            self.engine.flush(src)

        self.engine.at(at, go)

    def received(self, node: int) -> list[MessageReceived]:
        return [e for e in self.events[node] if isinstance(e, MessageReceived)]

    def states(self, node: int) -> list[DeliveryState]:
        return [e.state for e in self.events[node] if isinstance(e, DeliveryStateChanged)]


@pytest.mark.parametrize(("kind", "n"), [("line", 6), ("grid", 16)])
def test_flood_delivers_end_to_end_and_gets_the_ack(kind: str, n: int) -> None:
    net = Net(kind, n)
    net.send(0, n - 1, 1.0, b"one")
    net.send(n - 1, 0, 2.0, b"two")
    net.engine.run(60.0)
    assert [m.payload for m in net.received(n - 1)] == [b"one"]
    assert [m.payload for m in net.received(0)] == [b"two"]
    assert net.states(0)[-1] is DeliveryState.DELIVERED
    assert net.states(n - 1)[-1] is DeliveryState.DELIVERED
    assert net.received(0)[0].src == net.idents[n - 1].address


def test_destination_beyond_ttl_is_not_reached() -> None:
    # A line has degree <= 2, so the TTL is max_ttl: 3 hops reach node 3, never node 4.
    cfg = FloodConfig(max_ttl=3, max_retries=2)
    net = Net("line", 6, config=cfg)
    net.send(0, 3, 1.0)
    net.send(0, 4, 1.0)
    net.engine.run(200.0)
    assert len(net.received(3)) == 1
    assert net.received(4) == []
    final = [e for e in net.events[0] if isinstance(e, DeliveryStateChanged)
             and e.state.is_final]
    assert sorted(e.state.value for e in final) == ["delivered", "failed"]
    assert net.cores[3].dropped.get("ttl", 0) >= 1


def test_dense_nodes_use_the_shorter_ttl() -> None:
    net = Net("line", 2)
    ident = Identity.from_seed(bytes(64))
    core = FloodCore(ident, now=0.0, rng=random.Random(0))
    for link in range(6):
        core.link_up(link, net.idents[link % 2].public, LinkInfo(LinkKind.MEMORY), now=0.0)
    core.send(net.idents[0].address, b"x", now=0.0)  # a neighbour: sent to it alone
    frames = core.frames_to_send()
    assert len({data for _, data in frames}) == 1
    assert decode_frame(frames[0][1]).ttl == 5


def test_retries_back_off_then_fail() -> None:
    cfg = FloodConfig(max_retries=3)
    net = Net("line", 3, config=cfg)
    net.engine.disconnect(1, 2)
    net.send(0, 2, 0.0)
    net.engine.run(1000.0)
    final = [e for e in net.events[0] if isinstance(e, DeliveryStateChanged)]
    assert final[-1].state is DeliveryState.FAILED
    assert final[-1].reason == "no ack after 3 retries"
    # attempts at 0, 11, 23, 37 (timeout 10 s + 1, 2, 4 s), fail 10 s after the last.
    assert net.engine.now == pytest.approx(47.0, abs=0.5)


def test_duplicate_data_reaches_the_app_once_but_is_acked_each_time() -> None:
    net = Net("line", 2)
    dst = net.cores[1]
    (link_id,) = list(dst._links)
    frame = Frame(FrameType.DATA, b"m" * 8, net.idents[0].address, net.idents[1].address,
                  body=b"hi", flags=FrameFlags.ACK_REQUESTED, ttl=5)
    dst.receive(link_id, frame.encode(), now=1.0)
    dst.receive(link_id, frame.encode(), now=1.1)  # seen-cache: dropped outright
    dst.receive(link_id, dataclasses.replace(frame, attempt=1).encode(), now=12.0)
    received = [e for e in iter(dst.next_event, None) if isinstance(e, MessageReceived)]
    assert len(received) == 1
    acks = [decode_frame(d) for _, d in dst.frames_to_send()]
    assert [a.type for a in acks] == [FrameType.ACK, FrameType.ACK]


def test_forged_ack_is_rejected_and_malformed_input_never_raises() -> None:
    net = Net("line", 2)
    src = net.cores[0]
    (link_id,) = list(src._links)
    mid = src.send(net.idents[1].address, b"x", now=0.0)
    src.frames_to_send()
    forger = Identity.from_seed(bytes([9]) * 64)
    body = mid + forger.public.signing_key + forger.sign(b"whatever")
    forged = Frame(FrameType.ACK, b"a" * 8, net.idents[1].address, net.idents[0].address,
                   body=body, ttl=5)
    src.receive(link_id, forged.encode(), now=1.0)
    src.receive(link_id, b"\x01", now=1.0)
    src.receive(link_id, b"\x07" * 60, now=1.0)
    events = list(iter(src.next_event, None))
    assert [e.reason.split(":")[0] for e in events if isinstance(e, FrameRejected)] == [
        "forged ack", "malformed", "malformed"]
    assert not any(isinstance(e, DeliveryStateChanged) and e.state is DeliveryState.DELIVERED
                   for e in events)


def test_relay_rate_limit_per_neighbour() -> None:
    net = Net("line", 3)
    relay = net.cores[1]
    link_from_0 = next(lid for lid, peer in relay._links.items()
                       if peer == net.idents[0].address)
    for i in range(20):
        frame = Frame(FrameType.DATA, i.to_bytes(8, "big"), net.idents[0].address,
                      net.idents[2].address, body=b"x", ttl=5)
        relay.receive(link_from_0, frame.encode(), now=0.0)
    assert relay.dropped["neighbour rate"] == 15  # burst of 5 at 5/s


def test_low_battery_node_does_not_relay() -> None:
    net = Net("line", 3)
    net.cores[1].set_battery(10, charging=False, now=0.0)
    net.send(0, 2, 1.0)
    net.engine.run(30.0)
    assert net.received(2) == []
    assert net.cores[1].dropped["battery"] >= 1


def test_seen_cache_is_bounded_in_count_and_age() -> None:
    seen = _Seen(capacity=100, ttl=10.0)
    for i in range(1000):
        seen.check_and_add(i.to_bytes(4, "big"), float(i) * 0.001)
    assert len(seen) == 100
    assert seen.check_and_add((999).to_bytes(4, "big"), 1.0)
    assert not seen.check_and_add((999).to_bytes(4, "big") + b"x", 20.0)
    assert len(seen) == 1


def test_flood_ttl_override_limits_the_reach_of_the_baseline() -> None:
    from meshd.sim.scenario import Scenario, run_strategy

    far = Scenario(nodes=8, topology="line", messages=8, pairs=8, duration=5.0, drain=2000.0,
                   battery="full", seed=2)
    short = run_strategy(dataclasses.replace(far, flood_ttl=2), "flood")
    full = run_strategy(far, "flood")
    assert full["delivery_ratio"] == 1.0  # a line has degree <= 2: TTL 8 spans it
    assert short["flood_ttl"] == 2
    assert 0 < short["delivered"] < 8
    assert short["undelivered_by_state"] == {
        "failed: no ack after 10 retries": 8 - short["delivered"]}
