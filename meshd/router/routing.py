"""The forwarding plane: neighbours, hop-by-hop reliable unicast, announces, rate limits,
link advice. Path discovery/repair lives in ``discovery.py`` (a base class of Router).

Sans-IO: methods take ``now``; outputs are queued in ``out`` (link sends), ``events``
(CoreEvents) and calls on the ``EndpointHooks`` the facade passes in.
"""

from __future__ import annotations

import abc
import heapq
import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from meshd.address import BROADCAST, NodeAddress
from meshd.crypto.identity import Identity, PublicIdentity
from meshd.errors import MeshdError, SignatureError
from meshd.router.announce import IdentityCache, OwnAnnounce
from meshd.router.bodies import (
    BATTERY_UNKNOWN,
    MAX_LINK_ACKS,
    decode_link_ack,
    encode_link_ack,
    prefix_of,
)
from meshd.router.clusters import LinkView, advise, cluster_signature
from meshd.router.dedup import SeenSet
from meshd.router.events import (
    CoreEvent,
    FrameRejected,
    LinkAdviceChanged,
    LinkId,
    NeighbourDown,
    NeighbourUp,
    PeerIdentityLearned,
)
from meshd.router.frames import WIRE_VERSION, Frame, FrameFlags, FrameType, decode_frame
from meshd.router.linkrel import InFlight, LinkReliability
from meshd.router.paths import PathTable, Route
from meshd.router.ratelimit import TokenBucket, battery_scale
from meshd.router.types import LinkInfo, LinkKind, NeighbourInfo

ENDPOINT_TYPES = frozenset(
    {FrameType.DATA, FrameType.ACK, FrameType.CUSTODY_OFFER, FrameType.CUSTODY_RECEIPT}
)
# Plain ints for the per-frame path: enum attribute access and IntFlag '&' cost 0.1-0.9 us
# each, int operations ~20 ns (profiled, issue 3). Frame fields stay enums.
_LINK_ACK = int(FrameType.LINK_ACK)
_ANNOUNCE = int(FrameType.ANNOUNCE)
_PATH_REQUEST = int(FrameType.PATH_REQUEST)
_PATH_REPLY = int(FrameType.PATH_REPLY)
_PATH_ERROR = int(FrameType.PATH_ERROR)
FLOOD_BIT = int(FrameFlags.FLOOD)
KIND_NAME: Mapping[int, str] = MappingProxyType({int(t): t.name for t in FrameType})
MAX_QUEUED_EVENTS = 4096  # past this, FrameRejected events are counted, not queued
REANNOUNCE_DELAY = 5.0  # coalesces a burst of link changes into one announce round
REANNOUNCE_GAP = 30.0


class EndpointHooks(Protocol):
    """The part of the end-to-end Endpoint (reliability.py) the router calls."""

    def on_local_frame(
        self, frame: Frame, *, now: float,
        key_of: Callable[[NodeAddress], PublicIdentity | None],
    ) -> None: ...

    def on_transmitted(self, frame_id: bytes, *, now: float) -> None: ...

    def on_next_hop_acked(self, frame_id: bytes, *, now: float) -> None: ...

    def on_route_failed(self, frame_id: bytes, *, now: float) -> None: ...

    def take_custody(self, frame: Frame, *, now: float) -> bool: ...

    def path_available(self, dst: NodeAddress, *, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Forwarding-plane tunables (figures and their sources in docs/wire-format.md)."""

    announce_interval: float = 60.0
    announce_keepalive: int = 5  # unchanged announces go out every 5 intervals only
    default_ttl: int = 64
    flood_ttl: int = 16
    flood_fanout: int = 3  # REFERENCE: fan-out 3, jitter 20-200 ms
    flood_jitter: tuple[float, float] = (0.020, 0.200)
    preq_jitter: tuple[float, float] = (0.010, 0.080)
    discovery_timeout: float = 2.5  # first try; doubles per retry
    discovery_tries: int = 3
    # The last try relays to every neighbour: the safety net for stale neighbour lists
    # that relay selection relied on.
    full_flood_retry: bool = True
    preq_relay_selection: bool = True  # MPR-style relays (relaysel.py); others get LEAF
    preq_relay_coverage: int = 1  # relays per 2-hop node (2: fewer retries, more sends)
    discovery_backoff: tuple[float, float] = (10.0, 300.0)  # after a failed discovery
    route_lifetime: float = 900.0  # refreshed on use
    pending_per_dst: int = 64
    pending_total: int = 1024
    pending_max_wait: float = 60.0
    repair_rate: float = 2.0  # discoveries/s started for frames relayed for others
    repair_burst: float = 20.0
    link_max_tries: int = 5
    link_max_inflight: int = 256
    relay_rate: float = 50.0  # frames/s relayed per neighbour (token bucket)
    relay_burst: float = 100.0
    max_links: int = 4  # advice for connection-limited transports (BLE)
    cluster_interval: float = 15.0  # REFERENCE: rebalance every 15 s
    path_capacity: int = 4096
    seen_capacity: int = 8192
    seen_max_age: float = 600.0
    identity_capacity: int = 8192
    flood_fallback: bool = True


@dataclass(slots=True)
class Neighbour:
    link_id: LinkId
    peer: PublicIdentity
    address: NodeAddress
    prefix: bytes
    info: LinkInfo
    up_since: float
    last_heard: float
    bucket: TokenBucket
    battery: int | None = None
    charging: bool = False
    cluster_id: int | None = None
    neighbours: frozenset[bytes] = frozenset()
    keep: bool = True
    announced: bool = False
    degree: int = 0
    sent_hood: frozenset[bytes] = frozenset()  # our neighbour list as last announced to it


@dataclass(slots=True)
class Pending:
    frame: Frame
    local: bool
    upstream: LinkId | None
    queued_at: float


@dataclass(slots=True)
class Stats:
    tx: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    rate_limited: int = 0
    dropped: int = 0
    events_dropped: int = 0
    happened: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str) -> None:
        self.tx[kind] = self.tx.get(kind, 0) + 1

    def count_event(self, kind: str) -> None:
        self.happened[kind] = self.happened.get(kind, 0) + 1


class RouterBase(abc.ABC):
    """State and plumbing shared by the forwarding plane and path discovery."""

    def __init__(
        self,
        identity: Identity,
        *,
        now: float,
        rng: random.Random,
        endpoint: EndpointHooks,
        config: RouterConfig | None = None,
    ) -> None:
        self.config = config or RouterConfig()
        cfg = self.config
        self.identity = identity
        self.address = identity.address
        self.prefix = prefix_of(self.address)
        self.rng = rng
        self.endpoint = endpoint
        self.neighbours: dict[LinkId, Neighbour] = {}
        self.by_addr: dict[NodeAddress, LinkId] = {}
        self.table = PathTable(capacity=cfg.path_capacity)
        self.linkrel = LinkReliability(
            max_tries=cfg.link_max_tries, max_inflight=cfg.link_max_inflight
        )
        self.rx_seen = SeenSet(capacity=cfg.seen_capacity, max_age=cfg.seen_max_age)
        self.flood_seen = SeenSet(capacity=cfg.seen_capacity, max_age=cfg.seen_max_age)
        self.identities = IdentityCache(capacity=cfg.identity_capacity)
        self.identities.pin(identity.public)
        self.own = OwnAnnounce(identity)
        self.out: list[tuple[LinkId, bytes]] = []
        # LINK_ACKs owed per link (an ordered set of dedup keys), sent by flush_acks.
        self.acks_owed: dict[LinkId, dict[tuple[bytes, int], None]] = {}
        self.events: deque[CoreEvent] = deque()
        self.stats = Stats()
        self._timers: list[tuple[float, int, str, object]] = []
        self._timer_counter = 0
        self._cluster_dirty = False
        self._reannounce_pending = False
        self._last_reannounce = -1e9
        self._last_periodic: tuple[bytes, float] = (b"", now)
        self._last_battery_announce = -1e9
        self._announced_identities: dict[NodeAddress, bytes] = {}
        self.schedule(now + cfg.announce_interval * rng.uniform(0.5, 1.0), "announce", None)
        self.schedule(now + cfg.cluster_interval, "cluster", None)
        self.schedule(now + 30.0, "sweep", None)

    # --- plumbing -----------------------------------------------------------------
    def schedule(self, when: float, kind: str, payload: object) -> None:
        self._timer_counter += 1
        heapq.heappush(self._timers, (when, self._timer_counter, kind, payload))

    def pop_due_timers(self, now: float) -> list[tuple[str, object]]:
        due: list[tuple[str, object]] = []
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, payload = heapq.heappop(self._timers)
            due.append((kind, payload))
        return due

    def next_deadline(self) -> float | None:
        timer = self._timers[0][0] if self._timers else None
        link = self.linkrel.next_deadline()
        if timer is None or (link is not None and link < timer):
            return link
        return timer

    def emit(self, event: CoreEvent) -> None:
        if isinstance(event, FrameRejected) and len(self.events) >= MAX_QUEUED_EVENTS:
            self.stats.events_dropped += 1
            return
        self.events.append(event)

    def reject(self, link_id: LinkId, reason: str) -> None:
        self.stats.rejected += 1
        self.emit(FrameRejected(link_id, reason))

    def send_raw(self, link_id: LinkId, data: bytes, kind: str) -> None:
        self.out.append((link_id, data))
        self.stats.count(kind)

    def key_of(self, address: NodeAddress) -> PublicIdentity | None:
        record = self.identities.get(address)
        return record.identity if record is not None else None

    def can_route(self, dst: NodeAddress) -> bool:
        return dst in self.by_addr or self.table.get(dst, now=-1e18) is not None

    # --- costs (sum over hops of 1 + link-quality penalty + relay battery penalty) --
    def hop_cost(self, link_id: LinkId, *, relay: bool) -> float:
        quality = max(0.2, self.linkrel.quality(link_id))
        cost = 1.0 + min(4.0, 1.0 / quality - 1.0)
        neighbour = self.neighbours.get(link_id)
        if relay and neighbour is not None:
            cost += battery_penalty(neighbour.battery, neighbour.charging)
        return cost

    # --- unicast with hop-by-hop reliability ----------------------------------------
    def transmit(
        self, link_id: LinkId, frame: Frame, *, local: bool, upstream: LinkId | None, now: float
    ) -> bool:
        data = frame.encode()
        if not self.linkrel.track(link_id, frame, data, local=local, upstream=upstream, now=now):
            self.stats.dropped += 1
            return False
        self.send_raw(link_id, data, KIND_NAME[frame.type])
        if local and frame.type in ENDPOINT_TYPES:
            self.endpoint.on_transmitted(frame.frame_id, now=now)
        return True

    def handle_link_ack(self, link_id: LinkId, data: bytes, *, now: float) -> None:
        for key in decode_link_ack(data):
            item = self.linkrel.acked(link_id, key, now=now)
            if item is not None and item.local and item.frame.type in ENDPOINT_TYPES:
                self.endpoint.on_next_hop_acked(item.frame.frame_id, now=now)

    def ack_frame(self, link_id: LinkId, frame: Frame) -> None:
        """Owe ``link_id`` a LINK_ACK for ``frame``; ``flush_acks`` sends it."""
        owed = self.acks_owed.get(link_id)
        if owed is None:
            owed = self.acks_owed[link_id] = {}
        owed[frame.dedup_key] = None

    def flush_acks(self) -> None:
        """One LINK_ACK per link (up to 64 keys each) for what was received since the last
        flush. One LINK_ACK per frame was half of all frames on a busy link, each one
        encrypted, decrypted, decoded and handled (profiled: 5-7 % of a daemon's CPU)."""
        if not self.acks_owed:
            return
        owed, self.acks_owed = self.acks_owed, {}
        for link_id, keys in owed.items():
            if link_id not in self.neighbours:
                continue
            pending = list(keys)
            for i in range(0, len(pending), MAX_LINK_ACKS):
                chunk = pending[i : i + MAX_LINK_ACKS]
                self.send_raw(link_id, encode_link_ack(chunk), "LINK_ACK")

    def retransmit_due(self, *, now: float) -> list[InFlight]:
        resend, failed = self.linkrel.due(now=now)
        for item in resend:
            if item.link_id in self.neighbours:
                self.send_raw(item.link_id, item.data, KIND_NAME[item.frame.type])
        return failed

    # --- announces ------------------------------------------------------------------
    def announce_frame(self) -> bytes:
        body = self.own.encoded()
        frame = Frame(
            FrameType.ANNOUNCE, self.rng.randbytes(8), self.address, BROADCAST, body, ttl=1
        )
        return frame.encode()

    def periodic_announce(self, *, now: float) -> None:
        """Every interval if the announce changed, else every ``announce_keepalive``
        intervals: in a static mesh unchanged periodic announces were a quarter of all
        transmissions (1000-node run), and changes are announced when they happen."""
        body = self.own.encoded()
        keepalive = self.config.announce_interval * self.config.announce_keepalive
        if body == self._last_periodic[0] and now - self._last_periodic[1] < keepalive:
            return
        self._last_periodic = (body, now)
        self.announce_to(list(self.neighbours))

    def announce_to(self, link_ids: list[LinkId]) -> None:
        if not link_ids:
            return
        data = self.announce_frame()
        hood = frozenset(self.own.neighbours)
        for link_id in link_ids:
            self.send_raw(link_id, data, "ANNOUNCE")
            neighbour = self.neighbours.get(link_id)
            if neighbour is not None:
                neighbour.sent_hood = hood

    def handle_announce(self, link_id: LinkId, frame: Frame, *, now: float) -> None:
        try:
            record, fresh = self.identities.accept(frame.body, claimed=frame.src)
        except SignatureError as exc:
            self.reject(link_id, f"forged announce: {exc}")
            return
        neighbour = self.neighbours[link_id]
        if fresh and frame.src == neighbour.address:
            ann = record.announce
            neighbour.battery = None if ann.battery == BATTERY_UNKNOWN else ann.battery
            neighbour.charging = ann.charging
            neighbour.cluster_id = ann.cluster_id
            neighbour.announced = True
            neighbour.degree = ann.degree
            if frozenset(ann.neighbours) != neighbour.neighbours:
                neighbour.neighbours = frozenset(ann.neighbours)
                self._cluster_dirty = True
        self.learned(frame.src, record.identity, record.announce.extensions)

    def learned(self, address: NodeAddress, identity: PublicIdentity, extensions: bytes) -> None:
        """Emit PeerIdentityLearned once per identity (and again when extensions change)."""
        if address == self.address:
            return
        marker = identity.signing_key + identity.exchange_key + extensions
        if self._announced_identities.get(address) == marker:
            return
        if len(self._announced_identities) >= self.config.identity_capacity:
            self._announced_identities.pop(next(iter(self._announced_identities)))
        self._announced_identities[address] = marker
        self.emit(PeerIdentityLearned(address, identity, extensions))

    # --- clusters and link advice -----------------------------------------------------
    def recompute_clusters(self, *, now: float) -> None:
        self._cluster_dirty = False
        prefixes = [n.prefix for n in self.neighbours.values()]
        self.own.update(
            cluster_id=cluster_signature(self.prefix, prefixes), neighbours=tuple(prefixes)
        )
        views = [
            LinkView(
                n.link_id, n.prefix, n.info.kind, self.linkrel.quality(n.link_id),
                n.battery, n.info.rssi, n.neighbours,
                settled=n.announced and now - n.up_since >= self.config.cluster_interval,
                kept=n.keep,
            )
            for n in self.neighbours.values()
        ]
        for link_id, (keep, reason) in advise(
            self.prefix, views, max_links=self.config.max_links
        ).items():
            neighbour = self.neighbours[link_id]
            if neighbour.keep != keep:
                neighbour.keep = keep
                self.emit(LinkAdviceChanged(link_id, keep, reason))

    def neighbour_infos(self) -> list[NeighbourInfo]:
        return [
            NeighbourInfo(
                n.link_id, n.address, n.info.kind, self.linkrel.quality(n.link_id),
                n.battery, n.cluster_id, n.keep, n.up_since,
            )
            for n in self.neighbours.values()
        ]

    # --- links ------------------------------------------------------------------------
    def add_neighbour(
        self, link_id: LinkId, peer: PublicIdentity, info: LinkInfo, *, now: float
    ) -> Neighbour:
        cfg = self.config
        address = peer.address
        neighbour = Neighbour(
            link_id, peer, address, prefix_of(address), info, now, now,
            TokenBucket(rate=cfg.relay_rate, burst=cfg.relay_burst, now=now),
        )
        self.neighbours[link_id] = neighbour
        self.by_addr[address] = link_id
        self.linkrel.add_link(link_id, info.quality if info.kind != LinkKind.MEMORY else 0.95)
        self.identities.pin(peer)
        self.topology_changed(now)
        self.emit(NeighbourUp(link_id, address))
        return neighbour

    def topology_changed(self, now: float) -> None:
        """Our neighbour set changed: tell the neighbours soon, once per burst of changes
        (their bridge/cluster view depends on our neighbour list)."""
        self._cluster_dirty = True
        if not self._reannounce_pending:
            self._reannounce_pending = True
            # At most one such round per REANNOUNCE_GAP: with mobility, links change
            # every few seconds and rounds every 5 s were most of all transmissions.
            when = max(now + REANNOUNCE_DELAY, self._last_reannounce + REANNOUNCE_GAP)
            self.schedule(when, "reannounce", None)

    def remove_neighbour(
        self, link_id: LinkId, *, now: float
    ) -> tuple[Neighbour | None, list[InFlight]]:
        neighbour = self.neighbours.pop(link_id, None)
        self.acks_owed.pop(link_id, None)
        if neighbour is None:
            return None, []
        self.topology_changed(now)
        if self.by_addr.get(neighbour.address) == link_id:
            del self.by_addr[neighbour.address]
            # Another link to the same peer may still be up.
            for other in self.neighbours.values():
                if other.address == neighbour.address:
                    self.by_addr[other.address] = other.link_id
        self.emit(NeighbourDown(link_id, neighbour.address))
        return neighbour, self.linkrel.remove_link(link_id)

    def relay_allowed(self, link_id: LinkId, *, now: float) -> bool:
        """Per-neighbour token bucket for frames relayed on its behalf, scaled by battery."""
        neighbour = self.neighbours[link_id]
        scale = battery_scale(self.own_battery, self.own.charging)
        if neighbour.bucket.take(now=now, cost=1.0 / scale):
            return True
        self.stats.rate_limited += 1
        return False

    def set_battery(self, level: int, charging: bool, *, now: float) -> None:
        """Re-announce to neighbours when the change matters to their path costs."""
        old, old_charging = self.own_battery, self.own.charging
        self.own.update(battery=level, charging=charging)
        meaningful = (
            old is None
            or charging != old_charging
            or abs(level - old) >= 10
            or any((old < mark) != (level < mark) for mark in (15, 30))
        )
        if meaningful and now - self._last_battery_announce >= 10.0:
            self._last_battery_announce = now
            self.announce_to(list(self.neighbours))

    @property
    def own_battery(self) -> int | None:
        return None if self.own.battery == BATTERY_UNKNOWN else self.own.battery

    # --- receive dispatch ---------------------------------------------------------------
    def receive(self, link_id: LinkId, data: bytes, *, now: float) -> None:
        neighbour = self.neighbours.get(link_id)
        if neighbour is None:
            self.reject(link_id, "frame on an unknown link")
            return
        neighbour.last_heard = now
        try:
            if len(data) >= 2 and data[1] == _LINK_ACK and data[0] == WIRE_VERSION:
                self.handle_link_ack(link_id, data, now=now)
                return
            frame = decode_frame(data)  # validates version and type of everything else
            self.dispatch(link_id, frame, now=now)
        except MeshdError as exc:
            self.reject(link_id, f"malformed frame: {exc}")

    def dispatch(self, link_id: LinkId, frame: Frame, *, now: float) -> None:
        ftype = frame.type
        unicast = not (int(frame.flags) & FLOOD_BIT or frame.dst.is_broadcast)
        if frame.src == self.address and ftype != _PATH_REQUEST:
            # Our own frame came back (flood echo or a transient loop): never relay it
            # again, but acknowledge a unicast copy so the neighbour stops retrying.
            if unicast:
                self.ack_frame(link_id, frame)
            return
        if ftype == _ANNOUNCE:
            self.handle_announce(link_id, frame, now=now)
            return
        if ftype == _PATH_REQUEST:
            self.handle_path_request(link_id, frame, now=now)
            return
        if not unicast:
            self.handle_flooded(link_id, frame, now=now)
            return
        # Unicast routed frame: LINK_ACK it (again, for duplicates), once accepted.
        key = (ftype, frame.frame_id, frame.attempt)
        if key in self.rx_seen:
            self.ack_frame(link_id, frame)
            return
        relaying = frame.dst != self.address
        if relaying and not self.relay_allowed(link_id, now=now):
            return  # no ACK: the neighbour's hop-by-hop retry is our backpressure
        self.rx_seen.add(key, now=now)
        self.ack_frame(link_id, frame)
        if (
            ftype in ENDPOINT_TYPES
            and frame.src not in self.by_addr
            and self.table.get(frame.src, now=now) is None
        ):
            # The frame came along a working chain of next hops: use it back towards its
            # source (seq unknown, so any real path replaces it) rather than discover.
            self.offer_route(
                frame.src, link_id, frame.hops + 1,
                float(frame.hops) + self.hop_cost(link_id, relay=False), 0, False,
                self.config.route_lifetime, now=now,
            )
        if ftype == _PATH_REPLY:
            self.handle_path_reply(link_id, frame, now=now)
        elif ftype == _PATH_ERROR:
            self.handle_path_error(link_id, frame, now=now)
        elif not relaying:
            self.endpoint.on_local_frame(frame, now=now, key_of=self.key_of)
        else:
            self.relay(link_id, frame, now=now)

    def next_hop(self, dst: NodeAddress, *, now: float) -> tuple[LinkId, Route | None] | None:
        """A direct neighbour first, then the path table."""
        link_id = self.by_addr.get(dst)
        if link_id is not None:
            return link_id, None
        route = self.table.get(dst, now=now)
        if route is None or route.link_id not in self.neighbours:
            return None
        return route.link_id, route

    # --- implemented by the discovery layer -----------------------------------------
    @abc.abstractmethod
    def offer_route(
        self, dst: NodeAddress, link_id: LinkId, hops: int, cost: float, seq: int,
        seq_valid: bool, lifetime: float, *, now: float,
    ) -> None:
        ...

    @abc.abstractmethod
    def handle_path_request(self, link_id: LinkId, frame: Frame, *, now: float) -> None:
        ...

    @abc.abstractmethod
    def handle_path_reply(self, link_id: LinkId, frame: Frame, *, now: float) -> None:
        ...

    @abc.abstractmethod
    def handle_path_error(self, link_id: LinkId, frame: Frame, *, now: float) -> None:
        ...

    @abc.abstractmethod
    def handle_flooded(self, link_id: LinkId, frame: Frame, *, now: float) -> None:
        ...

    @abc.abstractmethod
    def relay(self, link_id: LinkId, frame: Frame, *, now: float) -> None:
        ...


def battery_penalty(battery: int | None, charging: bool) -> float:
    """Relay battery penalty: 0 at >= 30 % (or charging), 1-2 between 15 and 30 %, and 10
    below 15 % so such a relay is used only when there is no alternative."""
    if charging or battery is None or battery >= 30:
        return 0.0
    if battery < 15:
        return 10.0
    return 1.0 + (30 - battery) / 15
