"""Path failure handling: silent link failure detected by hop-by-hop timeouts, path
errors travelling upstream, and relays that are the only way through."""

from __future__ import annotations

from meshd.router.events import (
    DeliveryState,
    DeliveryStateChanged,
    MessageReceived,
    PathChanged,
)
from meshd.testing.memlink import LinkParams, MemFabric, build_mesh


def delivered(fabric: MemFabric, node: int) -> int:
    return sum(1 for e in fabric.events[node]
               if isinstance(e, DeliveryStateChanged) and e.state is DeliveryState.DELIVERED)


def test_a_silently_dead_link_is_detected_and_reported_upstream() -> None:
    fabric, cores = build_mesh(4, [(0, 1), (1, 2), (2, 3)], seed=100)
    fabric.run_for(1.0)
    cores[0].send(cores[3].address, b"first", now=fabric.now)
    fabric.kick(0)
    fabric.run_for(5.0)
    assert delivered(fabric, 0) == 1
    fabric.impair(2, 3, LinkParams(loss=1.0))  # no link_down: only timeouts can tell
    for events in fabric.events:
        events.clear()
    cores[0].send(cores[3].address, b"into the void", now=fabric.now)
    fabric.kick(0)
    fabric.run_for(20.0)
    lost_at = {i for i, events in enumerate(fabric.events)
               for e in events
               if isinstance(e, PathChanged) and e.dst == cores[3].address and e.next_hop is None}
    assert {0, 1, 2} <= lost_at, "node 2 gave up on the link and the error went upstream"
    assert cores[2].router.stats.tx.get("PATH_ERROR", 0) >= 1
    assert cores[1].router.stats.tx.get("PATH_ERROR", 0) >= 1
    fabric.impair(2, 3, LinkParams())  # the link heals; the endpoint's retries get through
    fabric.run_for(600.0)
    assert [e.payload for e in fabric.events[3] if isinstance(e, MessageReceived)] == [
        b"into the void"]


def test_a_nearly_flat_relay_still_relays_when_it_is_the_only_way() -> None:
    fabric, cores = build_mesh(3, [(0, 1), (1, 2)], seed=101)
    cores[1].set_battery(5, charging=False, now=fabric.now)
    fabric.kick(1)
    fabric.run_for(1.0)
    for k in range(5):
        cores[0].send(cores[2].address, b"%d" % k, now=fabric.now)
    fabric.kick(0)
    fabric.run_for(30.0)
    assert delivered(fabric, 0) == 5
    route = next(r for r in cores[0].routes() if r.dst == cores[2].address)
    assert route.cost > 10  # the flat relay's penalty is in the path cost
