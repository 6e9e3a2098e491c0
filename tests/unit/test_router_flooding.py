"""Controlled flooding (forwarding only, with a recording fake endpoint)."""

from __future__ import annotations

import random
from collections.abc import Callable

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity, PublicIdentity
from meshd.router.core import CoreConfig, MeshCore
from meshd.router.events import CoreEvent
from meshd.router.frames import Frame, FrameFlags, FrameType
from meshd.router.types import OutboxEntry
from meshd.testing.memlink import MemFabric, identity_for


class RecordingEndpoint:
    """Collects what the router hands up; originates nothing by itself."""

    def __init__(self) -> None:
        self.local: list[Frame] = []
        self.outgoing: list[Frame] = []

    def send(self, dst: NodeAddress, payload: bytes, *, now: float, lifetime: float | None,
             message_id: bytes | None) -> bytes:
        raise NotImplementedError

    def restore(self, entries: list[OutboxEntry], *, now: float) -> None:
        pass

    def poll(self, *, now: float, can_route: Callable[[NodeAddress], bool]) -> list[Frame]:
        out, self.outgoing = self.outgoing, []
        return out

    def on_local_frame(self, frame: Frame, *, now: float,
                       key_of: Callable[[NodeAddress], PublicIdentity | None]) -> None:
        self.local.append(frame)

    def on_transmitted(self, frame_id: bytes, *, now: float) -> None:
        pass

    def on_next_hop_acked(self, frame_id: bytes, *, now: float) -> None:
        pass

    def on_route_failed(self, frame_id: bytes, *, now: float) -> None:
        pass

    def take_custody(self, frame: Frame, *, now: float) -> bool:
        return False

    def path_available(self, dst: NodeAddress, *, now: float) -> None:
        pass

    def neighbour_appeared(self, *, now: float) -> None:
        pass

    def next_deadline(self) -> float | None:
        return None

    def next_event(self) -> CoreEvent | None:
        return None

    def outbox(self) -> list[OutboxEntry]:
        return []


def test_a_flooded_frame_reaches_its_destination_once_and_leaves_a_path_back() -> None:
    endpoints = [RecordingEndpoint() for _ in range(6)]
    fabric = MemFabric(seed=3)
    cores = []
    for i, endpoint in enumerate(endpoints):
        def factory(_id: Identity, _rng: random.Random, _cfg: CoreConfig,
                    e: RecordingEndpoint = endpoint) -> RecordingEndpoint:
            return e
        cores.append(MeshCore(identity_for(i, seed=3), now=0.0, rng=random.Random(i),
                              endpoint_factory=factory))
        fabric.add(cores[-1])
    # a ladder: 0-1-2-3 and 0-4-5-3, with rungs 1-4, 2-5
    for a, b in [(0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 3), (1, 4), (2, 5)]:
        fabric.connect(a, b)
    fabric.run_for(1.0)
    before = {i: c.router.stats.tx.get("FLOOD_DATA", 0) for i, c in enumerate(cores)}
    frame = Frame(FrameType.DATA, b"flooded!", cores[0].address, cores[3].address, b"body",
                  FrameFlags.FLOOD | FrameFlags.ACK_REQUESTED, ttl=8)
    endpoints[0].outgoing.append(frame)
    cores[0].handle_timer(now=fabric.now)  # pumps the endpoint
    fabric.kick(0)
    fabric.run_for(2.0)
    assert [f.frame_id for f in endpoints[3].local] == [b"flooded!"]
    # The last relay had the destination as a neighbour: it left the flood and sent the
    # frame unicast (hop-by-hop acknowledged).
    assert not endpoints[3].local[0].flags & FrameFlags.FLOOD
    assert endpoints[3].local[0].hops == 2
    assert all(not e.local for i, e in enumerate(endpoints) if i != 3)
    sends = {i: c.router.stats.tx.get("FLOOD_DATA", 0) - before[i] for i, c in enumerate(cores)}
    assert sends[0] == 2 and sends[3] == 0  # the origin to all, the destination stops it
    assert all(count <= 3 for count in sends.values())  # each relays once, fan-out <= 3
    assert cores[3].router.can_route(cores[0].address)  # reverse path for the ACK
