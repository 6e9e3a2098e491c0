"""In-memory lossy link fabric for tests: sans-IO mesh cores wired together through links
that drop, duplicate, reorder and delay frames, with a seeded RNG and a manual clock.

    fabric = MemFabric(seed=1)
    a, b = fabric.add(core_a), fabric.add(core_b)
    fabric.connect(a, b, LinkParams(loss=0.05, duplicate=0.02, reorder=0.1))
    core_a.send(core_b.address, b"hi", now=fabric.now); fabric.kick(a)
    fabric.run_for(10.0)
    fabric.events[b]  # every CoreEvent node b produced, in order

Virtual time only moves inside ``run_*``; nothing sleeps, so an hour of mesh time runs in
milliseconds of CPU when the mesh is quiet.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity, PublicIdentity
from meshd.errors import AlreadyExists, InvalidArgument, NotFound
from meshd.router.core import CoreConfig, MeshCore
from meshd.router.events import CoreEvent, LinkId
from meshd.router.types import LinkInfo, LinkKind


class Core(Protocol):
    """The part of MeshCore the fabric drives."""

    @property
    def address(self) -> NodeAddress: ...

    def public_identity_of(self, address: NodeAddress) -> PublicIdentity | None: ...

    def link_up(
        self, link_id: LinkId, peer: PublicIdentity, info: LinkInfo, *, now: float
    ) -> None: ...

    def link_down(self, link_id: LinkId, *, now: float) -> None: ...

    def receive(self, link_id: LinkId, data: bytes, *, now: float) -> None: ...

    def handle_timer(self, *, now: float) -> None: ...

    def frames_to_send(self) -> list[tuple[LinkId, bytes]]: ...

    def next_event(self) -> CoreEvent | None: ...

    def next_deadline(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class LinkParams:
    """Impairments of one link (both directions draw independently)."""

    loss: float = 0.0  # probability a frame is dropped
    duplicate: float = 0.0  # probability a frame is delivered twice
    reorder: float = 0.0  # probability a frame is held back by up to ``reorder_delay``
    delay: float = 0.010  # base one-way latency, seconds
    jitter: float = 0.0  # uniform extra latency, seconds
    reorder_delay: float = 0.100
    kind: LinkKind = LinkKind.MEMORY
    quality: float = 1.0
    rssi: int | None = None

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InvalidArgument(f"{name} must be within 0..1", field=name)
        for name in ("delay", "jitter", "reorder_delay"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name} must be >= 0", field=name)


@dataclass(slots=True)
class _End:
    node: int
    link_id: LinkId
    peer: int
    peer_link_id: LinkId
    params: LinkParams
    up: bool = True


class MemFabric:
    """Nodes, links and a discrete-event loop in virtual time."""

    def __init__(self, *, seed: int = 0, start: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.now = start
        self.nodes: list[Core] = []
        self.events: list[list[CoreEvent]] = []
        self.online: list[bool] = []
        self.transmissions = 0
        self.bytes_sent = 0
        self.on_event: Callable[[int, CoreEvent], None] | None = None
        self._ends: dict[tuple[int, LinkId], _End] = {}
        self._pairs: dict[tuple[int, int], tuple[LinkId, LinkId]] = {}
        self._queue: list[tuple[float, int, int, LinkId, bytes]] = []  # deliveries
        self._timers: list[tuple[float, int, int]] = []
        self._armed: list[float | None] = []
        self._seq = 0
        self._next_link = 1

    # --- topology ------------------------------------------------------------------
    def add(self, core: Core) -> int:
        self.nodes.append(core)
        self.events.append([])
        self.online.append(True)
        self._armed.append(None)
        index = len(self.nodes) - 1
        self.kick(index)
        return index

    def connect(self, a: int, b: int, params: LinkParams | None = None) -> tuple[LinkId, LinkId]:
        """Bring up a link between nodes ``a`` and ``b`` (both get ``link_up``)."""
        if a == b:
            raise InvalidArgument("a node cannot link to itself", field="b")
        params = params or LinkParams()
        key = (min(a, b), max(a, b))
        if key in self._pairs:
            raise AlreadyExists(f"nodes {a} and {b} are already linked", field="b")
        la, lb = self._next_link, self._next_link + 1
        self._next_link += 2
        self._ends[(a, la)] = _End(a, la, b, lb, params)
        self._ends[(b, lb)] = _End(b, lb, a, la, params)
        self._pairs[key] = (la, lb) if a < b else (lb, la)
        info = LinkInfo(kind=params.kind, quality=params.quality, rssi=params.rssi)
        for node, link_id, peer in ((a, la, b), (b, lb, a)):
            identity = self._identity(peer)
            self.nodes[node].link_up(link_id, identity, info, now=self.now)
            self.kick(node)
        return la, lb

    def disconnect(self, a: int, b: int) -> None:
        key = (min(a, b), max(a, b))
        pair = self._pairs.pop(key, None)
        if pair is None:
            return
        for node, link_id in zip(key, pair, strict=True):
            end = self._ends.pop((node, link_id))
            end.up = False
            self.nodes[node].link_down(link_id, now=self.now)
            self.kick(node)

    def impair(self, a: int, b: int, params: LinkParams) -> None:
        """Change a live link's impairments without telling the cores (a silent failure
        when ``loss=1``: only the cores' own timeouts can notice)."""
        pair = self._pairs.get((min(a, b), max(a, b)))
        if pair is None:
            raise NotFound(f"nodes {a} and {b} are not linked", field="b")
        for node, link_id in zip((min(a, b), max(a, b)), pair, strict=True):
            self._ends[(node, link_id)].params = params

    def linked(self, a: int, b: int) -> bool:
        return (min(a, b), max(a, b)) in self._pairs

    def neighbours_of(self, a: int) -> list[int]:
        return [end.peer for (node, _), end in self._ends.items() if node == a]

    def take_offline(self, a: int) -> list[int]:
        """Cut every link of ``a`` and stop its timers; returns the peers it had."""
        peers = self.neighbours_of(a)
        for peer in peers:
            self.disconnect(a, peer)
        self.online[a] = False
        return peers

    def bring_online(self, a: int, peers: list[int], params: LinkParams | None = None) -> None:
        self.online[a] = True
        for peer in peers:
            if self.online[peer] and not self.linked(a, peer):
                self.connect(a, peer, params)
        self.kick(a)

    def _identity(self, index: int) -> PublicIdentity:
        core = self.nodes[index]
        identity = core.public_identity_of(core.address)
        if identity is None:
            raise NotFound(f"node {index} does not know its own public identity", field="node")
        return identity

    # --- the event loop --------------------------------------------------------------
    def kick(self, index: int) -> None:
        """Collect what a node produced after the test called into it directly."""
        core = self.nodes[index]
        for link_id, data in core.frames_to_send():
            self._transmit(index, link_id, data)
        while (event := core.next_event()) is not None:
            self.events[index].append(event)
            if self.on_event is not None:
                self.on_event(index, event)
        deadline = core.next_deadline() if self.online[index] else None
        if deadline is not None:
            at = max(deadline, self.now)
            if at != self._armed[index]:
                self._armed[index] = at
                self._seq += 1
                heapq.heappush(self._timers, (at, self._seq, index))

    def _transmit(self, index: int, link_id: LinkId, data: bytes) -> None:
        self.transmissions += 1
        self.bytes_sent += len(data)
        end = self._ends.get((index, link_id))
        if end is None or not end.up:
            return
        params, rng = end.params, self.rng
        if params.loss and rng.random() < params.loss:
            return
        copies = 2 if params.duplicate and rng.random() < params.duplicate else 1
        for _ in range(copies):
            at = self.now + params.delay + (rng.uniform(0, params.jitter) if params.jitter else 0)
            if params.reorder and rng.random() < params.reorder:
                at += rng.uniform(0, params.reorder_delay)
            self._seq += 1
            heapq.heappush(self._queue, (at, self._seq, end.peer, end.peer_link_id, data))

    def step(self, until: float) -> bool:
        """Process the earliest thing due at or before ``until``; False when none."""
        next_rx = self._queue[0][0] if self._queue else None
        next_timer = self._timers[0][0] if self._timers else None
        candidates = [t for t in (next_rx, next_timer) if t is not None and t <= until]
        if not candidates:
            return False
        when = min(candidates)
        self.now = max(self.now, when)
        if next_rx is not None and next_rx == when:
            _, _, node, link_id, data = heapq.heappop(self._queue)
            end = self._ends.get((node, link_id))
            if end is not None and end.up and self.online[node]:
                self.nodes[node].receive(link_id, data, now=self.now)
                self.kick(node)
            return True
        at, _, node = heapq.heappop(self._timers)
        if self._armed[node] == at:
            self._armed[node] = None  # this was the live entry for the node
        if self.online[node]:
            deadline = self.nodes[node].next_deadline()
            if deadline is not None and deadline <= self.now:
                self.nodes[node].handle_timer(now=self.now)
            self.kick(node)
        return True

    def run_until(self, until: float, *, max_steps: int = 10_000_000) -> None:
        steps = 0
        while self.step(until):
            steps += 1
            if steps >= max_steps:
                raise RuntimeError(f"no quiescence after {max_steps} steps")
        self.now = max(self.now, until)

    def run_for(self, seconds: float, **kwargs: int) -> None:
        self.run_until(self.now + seconds, **kwargs)

    def run_until_true(
        self, predicate: Callable[[], bool], *, timeout: float, check_every: float = 0.05
    ) -> bool:
        """Advance time until ``predicate()`` holds or ``timeout`` virtual seconds pass."""
        deadline = self.now + timeout
        while self.now < deadline:
            if predicate():
                return True
            self.run_until(min(deadline, self.now + check_every))
        return predicate()


def identity_for(index: int, *, seed: int = 0) -> Identity:
    """A deterministic identity per (seed, index), for reproducible tests."""
    return Identity.from_seed(random.Random(f"memlink-{seed}-{index}").randbytes(64))


def build_mesh(
    count: int,
    edges: list[tuple[int, int]],
    *,
    seed: int = 0,
    params: LinkParams | None = None,
    config: CoreConfig | None = None,
) -> tuple[MemFabric, list[MeshCore]]:
    """``count`` MeshCores (real Endpoint) linked along ``edges`` in a fresh fabric."""
    fabric = MemFabric(seed=seed)
    cores = [
        MeshCore(
            identity_for(i, seed=seed),
            now=fabric.now,
            rng=random.Random(seed * 7919 + i),
            config=config,
        )
        for i in range(count)
    ]
    for core in cores:
        fabric.add(core)
    for a, b in edges:
        fabric.connect(a, b, params)
    return fabric, cores
