"""Property test of custody: sender - relay - destination, with loss and nodes that come and
go. Whatever the schedule, the destination gets every message exactly once in the end and
the relay's custody store empties."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshd.address import NodeAddress
from meshd.router.events import DeliveryState, DeliveryStateChanged, MessageReceived
from meshd.router.frames import Frame, FrameFlags, FrameType
from meshd.router.reliability import Endpoint
from tests.unit.endpoint_harness import drain, endpoint, no_keys


class Chain:
    """A - R - B with a toy router: R relays between A and B and takes custody of DATA it
    cannot deliver; a hop loses frames with probability ``loss``."""

    def __init__(self, a: Endpoint, r: Endpoint, b: Endpoint, rng: random.Random,
                 loss: float) -> None:
        self.a, self.r, self.b = a, r, b
        self.rng, self.loss = rng, loss
        self.online = {a.address, r.address, b.address}
        self.by_addr = {ep.address: ep for ep in (a, r, b)}
        self.now = 0.0

    def reachable(self, src: NodeAddress, dst: NodeAddress) -> bool:
        if src not in self.online or dst not in self.online:
            return False
        return self.r.address in (src, dst) or self.r.address in self.online

    def set_online(self, address: NodeAddress, up: bool) -> None:
        if up:
            self.online.add(address)
            for ep in self.by_addr.values():
                if ep.address in self.online and ep.address != address:
                    ep.path_available(address, now=self.now)
                    self.by_addr[address].path_available(ep.address, now=self.now)
        else:
            self.online.discard(address)

    def hop(self) -> bool:
        return self.rng.random() >= self.loss

    def route(self, origin: Endpoint, frame: Frame) -> None:
        dst = frame.dst
        if origin is not self.r and dst != self.r.address:  # A <-> B goes through R
            if self.r.address not in self.online:
                origin.on_route_failed(frame.frame_id, now=self.now)
                return
            origin.on_transmitted(frame.frame_id, now=self.now)
            if not self.hop():
                return
            if dst not in self.online:  # R's router cannot forward it
                if frame.type is FrameType.DATA and frame.flags & FrameFlags.CUSTODY_ALLOWED:
                    self.r.take_custody(frame.hopped(), now=self.now)
                return
            frame = frame.hopped()
        elif dst not in self.online:
            origin.on_route_failed(frame.frame_id, now=self.now)
            return
        else:
            origin.on_transmitted(frame.frame_id, now=self.now)
        if self.hop():
            self.by_addr[dst].on_local_frame(frame, now=self.now, key_of=no_keys)

    def run(self, until: float) -> None:
        while self.now < until:
            for ep in self.by_addr.values():
                if ep.address in self.online:
                    can = (lambda src: lambda d: self.reachable(src, d))(ep.address)
                    for frame in ep.poll(now=self.now, can_route=can):
                        self.route(ep, frame)
            deadlines = [d for ep in self.by_addr.values() if ep.address in self.online
                         if (d := ep.next_deadline()) is not None]
            self.now = min(until, max(min(deadlines, default=until), self.now + 0.01))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.3),
    count=st.integers(1, 4),
    b_away=st.tuples(st.floats(0.0, 100.0), st.floats(0.0, 4000.0)),
    a_leaves=st.floats(5.0, 200.0),
)
def test_custody_delivers_exactly_once_whatever_the_schedule(
    seed: int, loss: float, count: int, b_away: tuple[float, float], a_leaves: float
) -> None:
    a, r, b = endpoint(1, seed=seed % 97), endpoint(2, seed=seed % 89), endpoint(3)
    net = Chain(a, r, b, random.Random(seed), loss)
    away_from, away_for = b_away
    net.run(away_from)
    net.set_online(b.address, False)
    ids = [a.send(b.address, b"m%d" % i, now=net.now, lifetime=None, message_id=None)
           for i in range(count)]
    net.run(away_from + a_leaves)
    net.set_online(a.address, False)  # the sender leaves, held or not
    net.run(away_from + max(a_leaves, away_for))
    net.set_online(b.address, True)
    net.run(net.now + 600.0)
    net.set_online(a.address, True)
    net.run(net.now + 4 * 3600.0)  # long enough for the held probes despite loss
    got = [e.message_id for e in drain(b) if isinstance(e, MessageReceived)]
    states = {e.message_id: e.state for e in drain(a) if isinstance(e, DeliveryStateChanged)}
    assert sorted(got) == sorted(ids)  # each exactly once
    assert r.custody() == []
    assert a.outbox() == [] and all(states[m] is DeliveryState.DELIVERED for m in ids)
