"""MeshCore: the sans-IO mesh node (routing + reliability + custody) behind one facade.

Contract for adapters (daemon, simulator, tests), in the style of aioquic's connection:

* Feed it: ``link_up``/``link_down``/``receive`` from transports, ``send`` from apps,
  ``set_battery``, and ``handle_timer`` when ``next_deadline()`` has passed.
  Every call takes ``now`` (seconds, float, monotonic) keyword-only.
* Drain it: ``frames_to_send()`` -> ``[(link_id, frame_bytes)]`` to write on links,
  ``next_event()`` until None for app/daemon events (``meshd.router.events``),
  then re-arm one timer at ``next_deadline()``.
* It never reads a clock, sleeps, logs globally, or touches a socket. Randomness comes
  from the ``rng`` passed in (seeded in tests and the simulator).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity, PublicIdentity
from meshd.errors import InvalidArgument
from meshd.router.bodies import MAX_EXTENSIONS_LEN
from meshd.router.discovery import Router
from meshd.router.events import CoreEvent, LinkId
from meshd.router.frames import Frame
from meshd.router.linkrel import link_throughput
from meshd.router.routing import RouterConfig, Stats
from meshd.router.types import LinkInfo, NeighbourInfo, OutboxEntry, RouteInfo

if TYPE_CHECKING:
    from meshd.router.routing import EndpointHooks


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Tunables; defaults are the daemon's. See REFERENCE.md for where numbers come from."""

    message_lifetime: float = 7 * 24 * 3600.0
    outbox_limit: int = 10_000
    custody_limit_bytes: int = 64 * 1024 * 1024
    custody_limit_frames: int = 10_000
    custody_lifetime: float = 7 * 24 * 3600.0
    announce_interval: float = 60.0
    # 64 (= frames.MAX_TTL): a 1000-node random geometric graph of mean degree 8 has
    # shortest paths of 30+ hops between far corners; 32 lost such pairs entirely.
    default_ttl: int = 64
    flood_ttl: int = 16
    # Paths persisted before a restart are installed as unconfirmed hints when the link to
    # their next hop comes up, within this many seconds of the restore (0: not restored).
    path_hint_ttl: float = 30.0
    # Forwarding-plane tunables beyond these live in RouterConfig (None: defaults).
    router: RouterConfig | None = None

    def router_config(self) -> RouterConfig:
        from dataclasses import replace

        base = self.router or RouterConfig()
        return replace(
            base,
            announce_interval=self.announce_interval,
            default_ttl=self.default_ttl,
            flood_ttl=self.flood_ttl,
        )


class EndpointLike(Protocol):
    """What MeshCore needs of the end-to-end layer (``meshd.router.reliability.Endpoint``)."""

    def send(
        self, dst: NodeAddress, payload: bytes, *, now: float, lifetime: float | None,
        message_id: bytes | None,
    ) -> bytes: ...

    def restore(self, entries: list[OutboxEntry], *, now: float) -> None: ...

    def poll(self, *, now: float, can_route: Callable[[NodeAddress], bool]) -> list[Frame]: ...

    def on_local_frame(
        self, frame: Frame, *, now: float,
        key_of: Callable[[NodeAddress], PublicIdentity | None],
    ) -> None: ...

    def on_transmitted(self, frame_id: bytes, *, now: float) -> None: ...

    def on_next_hop_acked(self, frame_id: bytes, *, now: float) -> None: ...

    def on_route_failed(self, frame_id: bytes, *, now: float) -> None: ...

    def take_custody(self, frame: Frame, *, now: float) -> bool: ...

    def path_available(self, dst: NodeAddress, *, now: float) -> None: ...

    def neighbour_appeared(self, *, now: float) -> None: ...

    def next_deadline(self) -> float | None: ...

    def next_event(self) -> CoreEvent | None: ...

    def outbox(self) -> list[OutboxEntry]: ...


EndpointFactory = Callable[[Identity, random.Random, CoreConfig], EndpointLike]


def _default_endpoint(identity: Identity, rng: random.Random, config: CoreConfig) -> EndpointLike:
    from meshd.router.reliability import Endpoint

    endpoint: EndpointLike = Endpoint(identity, rng=rng, config=config, batch_acks=True)
    return endpoint


class MeshCore:
    """One mesh node's protocol state. Several instances may live in one process."""

    def __init__(
        self,
        identity: Identity,
        *,
        now: float,
        rng: random.Random,
        config: CoreConfig | None = None,
        endpoint_factory: EndpointFactory | None = None,
    ) -> None:
        self._config = config or CoreConfig()
        self._now = now
        self._identity = identity
        factory = endpoint_factory or _default_endpoint
        self._endpoint = factory(identity, rng, self._config)
        hooks: EndpointHooks = self._endpoint
        self._router = Router(
            identity, now=now, rng=rng, endpoint=hooks, config=self._config.router_config()
        )
        # next hop -> [(dst, hops, cost)] restored by restore_paths, until _hints_until.
        self._path_hints: dict[NodeAddress, list[tuple[NodeAddress, int, float]]] = {}
        self._hints_until = 0.0

    # --- inputs -----------------------------------------------------------------
    def link_up(
        self, link_id: LinkId, peer: PublicIdentity, info: LinkInfo, *, now: float
    ) -> None:
        """A transport finished an authenticated handshake with ``peer`` on ``link_id``."""
        self._router.link_up(link_id, peer, info, now=now)
        if self._path_hints:
            self._install_path_hints(link_id, peer.address, now)
        self._router.linkrel.set_throughput(link_id, link_throughput(info))
        # A new neighbour is a new way out (a DTN contact): what found none retries now,
        # not after the discovery back-off (10 s+) and the unroutable wait (30 s). Without
        # this a message sent while the links were still coming up (cold start, a relay
        # restarting) waited ~30 s (bench/daemon_bench cold 3-hop delivery: 30.07 s).
        self._router.backoff.clear()
        self._endpoint.neighbour_appeared(now=now)
        self._pump(now)

    def link_changed(self, link_id: LinkId, info: LinkInfo, *, now: float) -> None:
        neighbour = self._router.neighbours.get(link_id)
        if neighbour is not None:
            neighbour.info = info
            if info.bitrate is not None:  # a new figure from the transport
                self._router.linkrel.set_throughput(link_id, link_throughput(info))
            self._router.recompute_clusters(now=now)
        self._pump(now)

    def link_down(self, link_id: LinkId, *, now: float) -> None:
        self._router.link_down(link_id, now=now)
        self._pump(now)

    def receive(self, link_id: LinkId, data: bytes, *, now: float) -> None:
        """Bytes of one whole frame from a link. Malformed input never raises."""
        self._router.receive(link_id, data, now=now)
        self._pump(now)

    def send(
        self,
        dst: NodeAddress,
        payload: bytes,
        *,
        now: float,
        lifetime: float | None = None,
        message_id: bytes | None = None,
    ) -> bytes:
        """Queue an end-to-end reliable message; returns its 8-byte message id."""
        if dst == self.address:
            raise InvalidArgument("cannot send a message to this node itself", field="dst")
        message = self._endpoint.send(
            dst, payload, now=now, lifetime=lifetime, message_id=message_id
        )
        self._pump(now)
        return message

    def restore(self, entries: list[OutboxEntry], *, now: float) -> None:
        """Reload outbox entries persisted by the daemon (after a restart)."""
        self._endpoint.restore(entries, now=now)
        self._pump(now)

    def restore_paths(
        self, paths: list[tuple[NodeAddress, NodeAddress, int, float]], *, now: float
    ) -> None:
        """Paths persisted before a restart, (dst, next hop, hops, cost), as hints.

        Each is installed when a link to its next hop comes up (within ``path_hint_ttl``),
        without a sequence number, so any announce or path reply replaces it, and expiring
        ``path_hint_ttl`` after the restore unless used. A stale one costs one attempt: the
        next hop answers with a path error (or holds the frame in custody) and the router
        discovers. Measured (memtransport, 3-hop line, sender restarted): the first message
        took ~50 ms to arrive with discovery, ~5 ms with the path known.
        """
        ttl = self._config.path_hint_ttl
        if ttl <= 0:
            return
        self._hints_until = now + ttl
        capacity = self._router.table.capacity
        for dst, next_hop, hops, cost in paths[:capacity]:
            if self.address not in (dst, next_hop):
                self._path_hints.setdefault(next_hop, []).append((dst, hops, cost))

    def _install_path_hints(self, link_id: LinkId, peer: NodeAddress, now: float) -> None:
        if now >= self._hints_until:
            self._path_hints.clear()
            return
        router = self._router
        for dst, hops, cost in self._path_hints.pop(peer, ()):
            if dst in router.by_addr or router.table.get(dst, now=now) is not None:
                continue  # a neighbour now, or a confirmed path already
            router.table.offer(dst, link_id=link_id, next_hop=peer, hops=hops, cost=cost,
                               seq=0, seq_valid=False, expires_at=self._hints_until, now=now)

    def set_battery(self, level: int, *, charging: bool, now: float) -> None:
        if not 0 <= level <= 100:
            raise InvalidArgument("battery level is 0..100", field="level")
        self._router.set_battery(level, charging, now=now)
        self._pump(now)

    def set_announce_extensions(self, extensions: bytes, *, now: float | None = None) -> None:
        """Opaque bytes carried in every announce (MLS key packages, later)."""
        if len(extensions) > MAX_EXTENSIONS_LEN:
            raise InvalidArgument(
                f"announce extensions over {MAX_EXTENSIONS_LEN} bytes", field="extensions"
            )
        self._router.own.update(extensions=bytes(extensions))
        if now is not None:
            self._router.announce_to(list(self._router.neighbours))

    def handle_timer(self, *, now: float) -> None:
        self._router.run_timers(now=now)
        self._pump(now)

    def _pump(self, now: float) -> None:
        """Route what the endpoint wants originated now (first sends, retries, ACKs...)."""
        self._now = max(self._now, now)
        router = self._router
        for frame in self._endpoint.poll(now=now, can_route=router.can_route):
            router.originate(frame, now=now)

    # --- outputs ----------------------------------------------------------------
    def frames_to_send(self) -> list[tuple[LinkId, bytes]]:
        # LINK_ACKs wait until the adapter drains: frames received since the last drain
        # (a daemon reads several per event-loop pass under load) share one per link.
        # End-to-end ACKs likewise: one signed ACK per sender for this drain's messages
        # (meshd/router/acks.py); endpoints without batching have no flush_acks.
        flush = getattr(self._endpoint, "flush_acks", None)
        if flush is not None:
            for frame in flush(now=self._now):
                self._router.originate(frame, now=self._now)
        self._router.flush_acks()
        out = self._router.out
        self._router.out = []
        return out

    def next_event(self) -> CoreEvent | None:
        events = self._router.events
        if events:
            return events.popleft()
        return self._endpoint.next_event()

    def next_deadline(self) -> float | None:
        router, endpoint = self._router.next_deadline(), self._endpoint.next_deadline()
        if router is None or (endpoint is not None and endpoint < router):
            return endpoint
        return router

    # --- inspection -------------------------------------------------------------
    @property
    def address(self) -> NodeAddress:
        return self._router.address

    def neighbours(self) -> list[NeighbourInfo]:
        return self._router.neighbour_infos()

    def routes(self) -> list[RouteInfo]:
        """Usable paths as of the last input (direct neighbours are not listed)."""
        router = self._router
        return [
            r.info() for r in router.table.routes(now=self._now) if r.link_id in router.neighbours
        ]

    def outbox(self) -> list[OutboxEntry]:
        return self._endpoint.outbox()

    def custody_records(self) -> list[tuple[Frame, float]]:
        """Frames held for others as (frame, hold-until), for the daemon to persist."""
        records = getattr(self._endpoint, "custody_records", None)
        return list(records()) if callable(records) else []

    def restore_custody(self, records: list[tuple[Frame, float]], *, now: float) -> None:
        """Reload persisted custody frames (``custody_records`` after a restart)."""
        restore = getattr(self._endpoint, "restore_custody", None)
        if callable(restore):
            restore(records, now=now)
        self._pump(now)

    def public_identity_of(self, address: NodeAddress) -> PublicIdentity | None:
        return self._router.key_of(address)

    def stats(self) -> Stats:
        """Counters for the simulator and benchmarks (transmissions by kind, drops)."""
        return self._router.stats

    @property
    def router(self) -> Router:
        """The forwarding plane (tests and the simulator inspect it)."""
        return self._router
