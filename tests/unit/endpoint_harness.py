"""Helpers for driving Endpoints back to back by hand (no router): a manual clock and a
lossy 'wire' that hands each frame to the endpoint whose address is the frame's dst."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity, PublicIdentity
from meshd.router.core import CoreConfig
from meshd.router.events import CoreEvent
from meshd.router.frames import Frame
from meshd.router.reliability import Endpoint


def identity(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 64)


def endpoint(n: int, *, seed: int = 0, config: CoreConfig | None = None) -> Endpoint:
    return Endpoint(identity(n), rng=random.Random(seed * 1000 + n), config=config or CoreConfig())


def no_keys(_address: NodeAddress) -> PublicIdentity | None:
    return None


def always(_dst: NodeAddress) -> bool:
    return True


def never(_dst: NodeAddress) -> bool:
    return False


def drain(ep: Endpoint) -> list[CoreEvent]:
    events = []
    while (event := ep.next_event()) is not None:
        events.append(event)
    return events


@dataclass
class Wire:
    """Endpoints joined directly; ``drop`` decides per frame whether it is lost."""

    endpoints: list[Endpoint]
    now: float = 0.0
    drop: Callable[[Frame], bool] = lambda _frame: False
    duplicate: int = 1  # copies delivered of every frame that is not dropped
    online: set[NodeAddress] = field(default_factory=set)
    sent: list[Frame] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.online = {ep.address for ep in self.endpoints}
        self._by_addr = {ep.address: ep for ep in self.endpoints}

    def can_route(self, dst: NodeAddress) -> bool:
        return dst in self.online

    def step(self) -> None:
        """Poll every online endpoint once and deliver what it originated."""
        for ep in self.endpoints:
            if ep.address not in self.online:
                continue
            for frame in ep.poll(now=self.now, can_route=self.can_route):
                self.sent.append(frame)
                self.sent_at.append(self.now)
                ep.on_transmitted(frame.frame_id, now=self.now)
                target = self._by_addr.get(frame.dst)
                if target is None or frame.dst not in self.online or self.drop(frame):
                    continue
                for _ in range(self.duplicate):
                    target.on_local_frame(frame, now=self.now, key_of=no_keys)

    def run_until(self, end: float, *, tick: float = 0.1) -> None:
        """Advance to ``end`` jumping from deadline to deadline (at least ``tick`` apart)."""
        while self.now < end:
            self.step()
            deadlines = [
                d for ep in self.endpoints if ep.address in self.online
                if (d := ep.next_deadline()) is not None
            ]
            nxt = min(deadlines, default=end)
            self.now = min(end, max(nxt, self.now + tick))
        self.step()


@dataclass
class LossyLink:
    """Endpoints joined through a seeded lossy channel that drops, duplicates, delays and
    so reorders frames (the router's job is not modelled: every frame goes straight to the
    endpoint named by its dst)."""

    endpoints: list[Endpoint]
    rng: random.Random
    loss: float = 0.0
    duplicate: float = 0.0
    max_delay: float = 0.0
    now: float = 0.0
    in_flight: list[tuple[float, int, Frame]] = field(default_factory=list)
    _seq: int = 0

    def __post_init__(self) -> None:
        self._by_addr = {ep.address: ep for ep in self.endpoints}

    def run_until(self, end: float) -> None:
        import heapq

        while self.now <= end:
            for ep in self.endpoints:
                for frame in ep.poll(now=self.now, can_route=always):
                    ep.on_transmitted(frame.frame_id, now=self.now)
                    copies = 1 + (self.rng.random() < self.duplicate)
                    for _ in range(copies):
                        if self.rng.random() >= self.loss:
                            self._seq += 1
                            at = self.now + self.rng.uniform(0.0, self.max_delay)
                            heapq.heappush(self.in_flight, (at, self._seq, frame))
            while self.in_flight and self.in_flight[0][0] <= self.now:
                _, _, frame = heapq.heappop(self.in_flight)
                target = self._by_addr.get(frame.dst)
                if target is not None:
                    target.on_local_frame(frame, now=self.now, key_of=no_keys)
            deadlines = [d for ep in self.endpoints if (d := ep.next_deadline()) is not None]
            if self.in_flight:
                deadlines.append(self.in_flight[0][0])
            if not deadlines:
                break
            self.now = max(min(deadlines), self.now + 0.001)
