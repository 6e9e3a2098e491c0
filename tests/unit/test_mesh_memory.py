"""One neighbour floods unique frames: memory stays bounded, others are not starved."""

from __future__ import annotations

import random
import tracemalloc

from meshd.address import BROADCAST, NodeAddress
from meshd.crypto.identity import Identity
from meshd.router.announce import OwnAnnounce
from meshd.router.bodies import PathRequest
from meshd.router.core import CoreConfig
from meshd.router.events import DeliveryState, DeliveryStateChanged, MessageReceived
from meshd.router.frames import Frame, FrameFlags, FrameType
from meshd.router.routing import RouterConfig
from meshd.testing.memlink import build_mesh

LIMITS = RouterConfig(
    seen_capacity=1024, path_capacity=256, identity_capacity=128, pending_total=128,
    relay_rate=10.0, relay_burst=20.0,
)


def _unique_frames(rng: random.Random, count: int) -> list[bytes]:
    frames = []
    for i in range(count):
        src, dst = NodeAddress(rng.randbytes(16)), NodeAddress(rng.randbytes(16))
        kind = i % 4
        if kind == 0:  # unicast DATA for somewhere unknown
            frame = Frame(FrameType.DATA, rng.randbytes(8), src, dst, rng.randbytes(40),
                          FrameFlags.CUSTODY_ALLOWED)
        elif kind == 1:  # path requests from made-up origins
            body = PathRequest(rng.getrandbits(32), 0, 16, 1).encode()
            frame = Frame(FrameType.PATH_REQUEST, rng.randbytes(8), src, dst, body)
        elif kind == 2:  # flooded DATA
            frame = Frame(FrameType.DATA, rng.randbytes(8), src, dst, b"f", FrameFlags.FLOOD)
        else:  # garbage announces for made-up sources
            frame = Frame(FrameType.ANNOUNCE, rng.randbytes(8), src, BROADCAST,
                          rng.randbytes(150), ttl=1)
        frames.append(frame.encode())
    return frames


def test_a_flood_of_unique_frames_from_one_neighbour_keeps_memory_bounded() -> None:
    # 1 is the noisy neighbour of 0; 2 talks to 3 through 0 meanwhile.
    fabric, cores = build_mesh(4, [], seed=11, config=CoreConfig(router=LIMITS))
    link_0_to_1, _ = fabric.connect(0, 1)
    fabric.connect(0, 2)
    fabric.connect(0, 3)
    fabric.run_for(1.0)
    rng = random.Random(3)
    # Real identities announcing once each: the identity cache must stay bounded too.
    announces = []
    for i in range(150):
        identity = Identity.from_seed(rng.randbytes(64))
        own = OwnAnnounce(identity)
        own.update(battery=i % 100)
        announces.append(Frame(FrameType.ANNOUNCE, rng.randbytes(8), identity.address,
                               BROADCAST, own.encoded(), ttl=1).encode())
    router = cores[0].router
    sent = []
    tracemalloc.start()
    baseline = 0
    for second in range(150):
        for data in _unique_frames(rng, 50):
            cores[0].receive(link_0_to_1, data, now=fabric.now)
        if second < len(announces):
            cores[0].receive(link_0_to_1, announces[second], now=fabric.now)
        fabric.kick(0)
        if second % 10 == 0:
            sent.append(cores[2].send(cores[3].address, b"%d" % second, now=fabric.now))
            fabric.kick(2)
        fabric.run_for(1.0)
        for events in fabric.events[:2]:
            events.clear()  # the harness's event log is not the core's memory
        if second == 50:
            baseline = tracemalloc.get_traced_memory()[0]
    grown = tracemalloc.get_traced_memory()[0] - baseline
    tracemalloc.stop()

    assert len(router.rx_seen) <= 1024 and len(router.flood_seen) <= 1024
    assert len(router.table) <= 256 and len(router.backoff) <= 256
    assert router.pending_total <= 128 and len(router.discoveries) <= 128
    assert len(router.identities) <= 128
    assert len(router.relay_states) <= 1024 and len(router.flood_states) <= 1024
    assert router.linkrel.inflight_count() <= 2 * 256 * 3
    assert router.stats.rate_limited > 3_000  # the bucket did the work
    assert grown < 1_500_000, f"memory grew by {grown} bytes between 50 s and 150 s"
    # The honest neighbour's traffic got through the whole time.
    got = [e for e in fabric.events[3] if isinstance(e, MessageReceived)]
    assert len(got) == len(sent)
    delivered = {e.message_id for e in fabric.events[2]
                 if isinstance(e, DeliveryStateChanged) and e.state is DeliveryState.DELIVERED}
    assert delivered == set(sent)
