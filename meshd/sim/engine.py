"""Discrete-event engine: cores, links with loss/latency/bandwidth, timers, in virtual time.

One heap of ``(time, seq, kind, node, arg)`` tuples; ``seq`` breaks ties in scheduling
order so runs are reproducible and payloads are never compared. After every call into a
core the engine drains it (frames, events) and re-arms the core's single timer, exactly
as the daemon's adapter does.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from meshd.address import NodeAddress
from meshd.crypto.identity import PublicIdentity
from meshd.router.events import CoreEvent, LinkId
from meshd.router.types import LinkInfo, LinkKind

_DELIVER, _TIMER, _CALL = 0, 1, 2
_MIN_TIMER = 1e-4  # a deadline already past fires 0.1 ms later: no zero-time spin


class SimCore(Protocol):
    """The adapter-facing half of ``meshd.router.core.MeshCore`` (FloodCore has it too)."""

    def link_up(self, link_id: LinkId, peer: PublicIdentity, info: LinkInfo, *,
                now: float) -> None: ...
    def link_down(self, link_id: LinkId, *, now: float) -> None: ...
    def receive(self, link_id: LinkId, data: bytes, *, now: float) -> None: ...
    def send(self, dst: NodeAddress, payload: bytes, *, now: float,
             lifetime: float | None = None, message_id: bytes | None = None) -> bytes: ...
    def set_battery(self, level: int, *, charging: bool, now: float) -> None: ...
    def handle_timer(self, *, now: float) -> None: ...
    def frames_to_send(self) -> list[tuple[LinkId, bytes]]: ...
    def next_event(self) -> CoreEvent | None: ...
    def next_deadline(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class LinkParams:
    loss: float = 0.0  # probability each transmission is lost
    latency: float = 0.005  # seconds of propagation + processing per hop
    bandwidth: float = 125_000.0  # bytes/s per direction; 0 = infinite
    queue_limit: float = 2.0  # seconds of backlog a link queue holds before tail drop


class Link:
    """An undirected link between nodes ``a`` and ``b``, one FIFO queue per direction."""

    __slots__ = ("a", "b", "busy", "id", "up")

    def __init__(self, link_id: LinkId, a: int, b: int) -> None:
        self.id, self.a, self.b = link_id, a, b
        self.up = True
        self.busy = [0.0, 0.0]  # when each direction's queue drains (a->b, b->a)


class Counters:
    """What the engine measures; the scenario turns it into the JSON figures."""

    __slots__ = ("bytes_by_type", "drops", "events", "overdue_timers", "timers", "tx_by_type",
                 "tx_total")

    def __init__(self) -> None:
        self.tx_total = 0
        self.tx_by_type = [0] * 256
        self.bytes_by_type = [0] * 256
        self.drops = {"loss": 0, "queue": 0, "link_down": 0, "no_link": 0}
        self.events = 0
        self.timers = 0  # handle_timer calls
        self.overdue_timers = 0  # deadlines already past when re-armed (a core spinning?)


EventSink = Callable[[int, CoreEvent], None]


class Engine:
    """Runs ``cores`` over links in virtual time; ``sink(node, event)`` gets core events."""

    def __init__(self, cores: list[SimCore], identities: list[PublicIdentity],
                 params: LinkParams, rng: random.Random, sink: EventSink) -> None:
        self.cores = cores
        self.identities = identities
        self.params = params
        self.counters = Counters()
        self.now = 0.0
        self.stopped = False
        self._rng = rng
        self._sink = sink
        self._heap: list[tuple[float, int, int, int, Any]] = []
        self._seq = 0
        self._armed = [math.inf] * len(cores)
        self._next_link = 1
        self.links: dict[LinkId, Link] = {}
        self._edge_link: dict[tuple[int, int], Link] = {}
        self._info = LinkInfo(kind=LinkKind.MEMORY, quality=1.0 - params.loss)

    # --- scheduling -------------------------------------------------------------
    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` at virtual time ``t`` (after events already scheduled for ``t``)."""
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, _CALL, -1, fn))

    def call(self, node: int, fn: Callable[[SimCore], object]) -> object:
        """Call into a core now (an app send, a battery change) and drain it."""
        result = fn(self.cores[node])
        self.flush(node)
        return result

    # --- topology ---------------------------------------------------------------
    @property
    def edges(self) -> list[tuple[int, int]]:
        return sorted(self._edge_link)

    def connect(self, a: int, b: int) -> None:
        key = (a, b) if a < b else (b, a)
        if key in self._edge_link:
            return
        link = Link(self._next_link, key[0], key[1])
        self._next_link += 1
        self.links[link.id] = link
        self._edge_link[key] = link
        now = self.now
        self.cores[key[0]].link_up(link.id, self.identities[key[1]], self._info, now=now)
        self.cores[key[1]].link_up(link.id, self.identities[key[0]], self._info, now=now)
        self.flush(key[0])
        self.flush(key[1])

    def disconnect(self, a: int, b: int) -> None:
        link = self._edge_link.pop((a, b) if a < b else (b, a), None)
        if link is None:
            return
        link.up = False
        del self.links[link.id]
        self.cores[link.a].link_down(link.id, now=self.now)
        self.cores[link.b].link_down(link.id, now=self.now)
        self.flush(link.a)
        self.flush(link.b)

    def set_edges(self, wanted: Iterable[tuple[int, int]]) -> tuple[int, int]:
        """Bring links down/up so that exactly ``wanted`` are up; returns (downs, ups)."""
        target = {(a, b) if a < b else (b, a) for a, b in wanted}
        current = set(self._edge_link)
        gone, new = sorted(current - target), sorted(target - current)
        for a, b in gone:
            self.disconnect(a, b)
        for a, b in new:
            self.connect(a, b)
        return len(gone), len(new)

    # --- the adapter loop -------------------------------------------------------
    def flush(self, i: int) -> None:
        """Drain core ``i``: put its frames on links, pass its events on, re-arm its timer."""
        core = self.cores[i]
        frames = core.frames_to_send()
        if frames:
            self._transmit(i, frames)
        event = core.next_event()
        while event is not None:
            self._sink(i, event)
            event = core.next_event()
        deadline = core.next_deadline()
        if deadline is not None and deadline < self._armed[i]:
            if deadline <= self.now:
                self.counters.overdue_timers += 1
                deadline = self.now + _MIN_TIMER
                if deadline >= self._armed[i]:
                    return
            self._armed[i] = deadline
            self._seq += 1
            heapq.heappush(self._heap, (deadline, self._seq, _TIMER, i, None))

    def _transmit(self, i: int, frames: list[tuple[LinkId, bytes]]) -> None:
        c = self.counters
        links = self.links
        now = self.now
        p = self.params
        rand = self._rng.random
        for link_id, data in frames:
            link = links.get(link_id)
            if link is None or not (link.a == i or link.b == i):
                c.drops["no_link"] += 1
                continue
            direction = 0 if link.a == i else 1
            start = link.busy[direction]
            if start < now:
                start = now
            elif start - now > p.queue_limit:
                c.drops["queue"] += 1
                continue
            if p.bandwidth > 0:
                start += len(data) / p.bandwidth
            link.busy[direction] = start
            c.tx_total += 1
            ftype = data[1] if len(data) > 1 else 0
            c.tx_by_type[ftype] += 1
            c.bytes_by_type[ftype] += len(data)
            if rand() < p.loss:
                c.drops["loss"] += 1
                continue
            self._seq += 1
            heapq.heappush(self._heap, (start + p.latency, self._seq, _DELIVER,
                                        link.b if direction == 0 else link.a, (link, data)))

    def run(self, until: float) -> None:
        """Process events up to virtual time ``until`` or until ``stopped`` is set."""
        heap = self._heap
        pop = heapq.heappop
        cores = self.cores
        armed = self._armed
        counters = self.counters
        while heap and not self.stopped:
            if heap[0][0] > until:
                break
            t, _, kind, node, arg = pop(heap)
            self.now = t
            counters.events += 1
            if kind == _DELIVER:
                link, data = arg
                if not link.up:
                    counters.drops["link_down"] += 1
                    continue
                cores[node].receive(link.id, data, now=t)
                self.flush(node)
            elif kind == _TIMER:
                if armed[node] != t:
                    continue  # superseded by an earlier deadline
                armed[node] = math.inf
                counters.timers += 1
                cores[node].handle_timer(now=t)
                self.flush(node)
            else:
                arg()
        if not self.stopped and heap and heap[0][0] > until:
            self.now = until
