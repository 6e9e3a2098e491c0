"""On-demand paths (AODV, RFC 3561) over the forwarding plane: path requests with
coverage-pruned relaying, signed path replies, path errors, local repair, buffering of
frames waiting for a path, custody hand-off and controlled-flood fallback.

PATH_REQUEST relaying is pruned because every link send is a transmission: each copy
lists the sender and the neighbours it sent to (``covered``); a relay forwards once, after
a short jitter, only to neighbours no copy it heard has covered. Every neighbour of a
forwarder has then been sent the request (by induction on forwarding order), as in a
full flood, at a fraction of the sends in a dense graph.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from dataclasses import dataclass

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity, PublicIdentity
from meshd.errors import MeshdError, SignatureError
from meshd.router.bodies import (
    COST_SCALE,
    MAX_NEIGHBOURS_LISTED,
    MAX_PATH_ERRORS,
    PREQ_FULL,
    PREQ_LEAF,
    PREQ_UNKNOWN_SEQ,
    PathError,
    PathReply,
    PathRequest,
    decode_announce,
    decode_path_error,
    decode_path_reply,
    decode_path_request,
    wire_cost,
)
from meshd.router.e2e_bodies import CustodyOfferBody
from meshd.router.events import LinkId, PathChanged
from meshd.router.flooding import FloodingRouter
from meshd.router.frames import Frame, FrameFlags, FrameType
from meshd.router.linkrel import InFlight
from meshd.router.ratelimit import TokenBucket
from meshd.router.relaysel import select_relays
from meshd.router.routing import (
    ENDPOINT_TYPES,
    FLOOD_BIT,
    EndpointHooks,
    Pending,
    RouterConfig,
    battery_penalty,
)
from meshd.router.types import LinkInfo

_REPLY_IMPROVEMENT = 1.0  # a later request copy must be this much cheaper to answer again
_MAX_REPLIES = 2
_LEAF_MEMORY = 2.0  # seconds a LEAF copy's coverage is kept for a later relay copy


@dataclass(slots=True)
class Discovery:
    tries: int
    request_id: bytes


@dataclass(slots=True)
class RelayState:
    """A path request heard and waiting for its jittered rebroadcast."""

    frame: Frame
    request: PathRequest
    covered: set[bytes]
    heard_from: set[LinkId]
    relay: bool = True  # False while only LEAF copies were heard


class Router(FloodingRouter):
    """A mesh node's forwarding plane and path discovery (see module docstrings)."""

    def __init__(
        self,
        identity: Identity,
        *,
        now: float,
        rng: random.Random,
        endpoint: EndpointHooks,
        config: RouterConfig | None = None,
    ) -> None:
        super().__init__(identity, now=now, rng=rng, endpoint=endpoint, config=config)
        self.pending: dict[NodeAddress, deque[Pending]] = {}
        self.pending_total = 0
        self.discoveries: dict[NodeAddress, Discovery] = {}
        self.backoff: dict[NodeAddress, tuple[float, float]] = {}  # dst -> (until, period)
        self.relay_states: OrderedDict[bytes, RelayState] = OrderedDict()
        self.replied: OrderedDict[bytes, tuple[float, int]] = OrderedDict()
        cfg = self.config
        self.repair_bucket = TokenBucket(rate=cfg.repair_rate, burst=cfg.repair_burst, now=now)

    # --- links --------------------------------------------------------------------
    def link_up(
        self, link_id: LinkId, peer: PublicIdentity, info: LinkInfo, *, now: float
    ) -> None:
        """A new authenticated neighbour: greet it and use the new path."""
        if link_id in self.neighbours:
            self.link_down(link_id, now=now)
        neighbour = self.add_neighbour(link_id, peer, info, now=now)
        # Greet with a current neighbour list (it names the new neighbour, which then
        # trusts it for relay selection); the others hear it in the re-announce round.
        self.recompute_clusters(now=now)
        self.announce_to([link_id])
        self.path_appeared(neighbour.address, now=now)

    def link_down(self, link_id: LinkId, *, now: float) -> None:
        neighbour, inflight = self.remove_neighbour(link_id, now=now)
        if neighbour is None:
            return
        self.table.drop_precursor(link_id)
        self.invalidate_link(link_id, now=now)
        for item in inflight:
            self.reroute(item, now=now)

    def invalidate_link(self, link_id: LinkId, *, now: float) -> None:
        """Every route via ``link_id`` is gone: tell the upstreams (AODV §6.11)."""
        broken = self.table.via_link(link_id)
        errors: dict[LinkId, list[tuple[NodeAddress, int]]] = {}
        for route in broken:
            self.table.remove(route.dst)
            self.emit(PathChanged(route.dst, None, 0, 0.0))
            for precursor in route.precursors:
                if precursor != link_id:
                    errors.setdefault(precursor, []).append((route.dst, route.seq))
        for precursor, unreachable in errors.items():
            self.send_path_error(precursor, unreachable, now=now)

    def reroute(self, item: InFlight, *, now: float) -> None:
        """A frame its next hop never acknowledged (or whose link went down): route it
        again, which is a local repair when no other path is known."""
        pending = Pending(item.frame, item.local, item.upstream, now)
        self.route_out(pending, now=now)

    # --- forwarding ---------------------------------------------------------------
    def originate(self, frame: Frame, *, now: float) -> None:
        """A frame the endpoint wants sent (first send, retry, ACK, custody traffic)."""
        if int(frame.flags) & FLOOD_BIT:
            self.flood_out(frame, now=now)
            return
        self.route_out(Pending(frame, True, None, now), now=now)

    def relay(self, link_id: LinkId, frame: Frame, *, now: float) -> None:
        if frame.ttl <= 1 or frame.hops >= 255:
            self.stats.dropped += 1
            return
        self.route_out(Pending(frame.hopped(), False, link_id, now), now=now)

    def route_out(self, item: Pending, *, now: float) -> None:
        frame = item.frame
        hop = self.next_hop(frame.dst, now=now)
        if hop is None:
            self.buffer(item, now=now)
            return
        link_id, route = hop
        if link_id == item.upstream and route is not None:
            # Our path points back where the frame came from: a stale path; repair it.
            self.table.remove(frame.dst)
            self.buffer(item, now=now)
            return
        if route is not None:
            route.expires_at = max(route.expires_at, now + self.config.route_lifetime)
            if item.upstream is not None:
                route.precursors.add(item.upstream)
                back = self.table.get(frame.src, now=now)
                if back is not None:
                    back.precursors.add(link_id)
        if not self.transmit(link_id, frame, local=item.local, upstream=item.upstream, now=now):
            self.give_up(item, now=now)

    def buffer(self, item: Pending, *, now: float) -> None:
        dst = item.frame.dst
        backoff = self.backoff.get(dst)
        if backoff is not None and backoff[0] > now:
            self.give_up(item, now=now)
            return
        cfg = self.config
        if dst not in self.discoveries and not item.local and not self.repair_bucket.take(now=now):
            # Discoveries on behalf of others are budgeted: a neighbour sending to random
            # addresses must not turn us into a network-wide request amplifier.
            self.give_up(item, now=now)
            return
        queue = self.pending.setdefault(dst, deque())
        if len(queue) >= cfg.pending_per_dst or self.pending_total >= cfg.pending_total:
            if not queue:
                del self.pending[dst]
            self.give_up(item, now=now)
            return
        queue.append(item)
        self.pending_total += 1
        if dst not in self.discoveries:
            self.discoveries[dst] = Discovery(0, b"")
            self.send_path_request(dst, now=now)

    def give_up(self, item: Pending, *, now: float) -> None:
        """No path: custody for relayed DATA, route failure (+ flood) for own frames."""
        frame = item.frame
        if item.local:
            if frame.type not in ENDPOINT_TYPES:
                return
            custody = frame.type == FrameType.DATA and frame.flags & FrameFlags.CUSTODY_ALLOWED
            if custody and frame.src == self.address and self.push_custody(frame, now=now):
                return
            self.endpoint.on_route_failed(frame.frame_id, now=now)
            # Flood only our own frames (never a custodian's periodic probes): a last try
            # that may find a destination discovery could not reach (e.g. ACK paths).
            if self.config.flood_fallback and frame.src == self.address:
                self.flood_out(frame, now=now)
            return
        custody = frame.type == FrameType.DATA and frame.flags & FrameFlags.CUSTODY_ALLOWED
        if custody and self.endpoint.take_custody(frame, now=now):
            return
        self.stats.dropped += 1
        if (
            frame.type in ENDPOINT_TYPES
            and item.upstream is not None
            and item.upstream in self.neighbours
        ):
            seq = self.table.last_seq(frame.dst) or 0
            self.send_path_error(item.upstream, [(frame.dst, seq)], now=now)

    def push_custody(self, frame: Frame, *, now: float) -> bool:
        """Our own message has no path: offer it to the neighbour best placed to hold it
        (most neighbours, healthy battery, good link), which answers with a custody
        receipt; the sender can then go offline."""
        candidates = [
            n for n in self.neighbours.values()
            if n.address != frame.dst and (n.battery is None or n.battery >= 15)
        ]
        if not candidates:
            return False
        best = max(
            candidates,
            key=lambda n: (len(n.neighbours), self.linkrel.quality(n.link_id), n.address),
        )
        self.stats.count_event("custody_push")
        offer = Frame(
            FrameType.CUSTODY_OFFER, self.rng.randbytes(8), self.address, best.address,
            CustodyOfferBody(frame).encode(), ttl=self.config.default_ttl,
        )
        return self.transmit(best.link_id, offer, local=False, upstream=None, now=now)

    def flush_pending(self, dst: NodeAddress, *, now: float) -> None:
        queue = self.pending.pop(dst, None)
        if not queue:
            return
        self.pending_total -= len(queue)
        for item in queue:
            self.route_out(item, now=now)

    def path_appeared(self, dst: NodeAddress, *, now: float) -> None:
        self.discoveries.pop(dst, None)
        self.backoff.pop(dst, None)
        self.flush_pending(dst, now=now)
        self.endpoint.path_available(dst, now=now)

    # --- path requests ------------------------------------------------------------
    def send_path_request(self, dst: NodeAddress, *, now: float) -> None:
        discovery = self.discoveries[dst]
        discovery.tries += 1
        request_id = self.rng.randbytes(8)
        discovery.request_id = request_id
        self.flood_seen.add(request_id, now=now)
        origin_seq = self.own.bump()
        last = self.table.last_seq(dst)
        # Only the last try floods fully: earlier retries with relay selection fail only
        # when losses strike twice, and cost a fraction of a full flood.
        full = self.config.full_flood_retry and discovery.tries >= max(
            2, self.config.discovery_tries
        )
        flags = (PREQ_UNKNOWN_SEQ if last is None else 0) | (PREQ_FULL if full else 0)
        self.stats.count_event("discovery_try" if discovery.tries > 1 else "discovery")
        request = PathRequest(origin_seq, last or 0, 0, flags, (), self.own.encoded())
        frame = Frame(
            FrameType.PATH_REQUEST, request_id, self.address, dst, b"",
            ttl=self.config.default_ttl,
        )
        self.broadcast_request(frame, request, list(self.neighbours))
        timeout = self.config.discovery_timeout * 2 ** (discovery.tries - 1)
        self.schedule(now + timeout, "discovery", (dst, request_id))

    def broadcast_request(
        self, frame: Frame, request: PathRequest, targets: list[LinkId],
        heard_covered: set[bytes] | None = None,
    ) -> None:
        if not targets:
            return
        relays = set(targets)
        if self.config.preq_relay_selection and not request.flags & PREQ_FULL:
            known = {self.prefix} | {n.prefix for n in self.neighbours.values()}
            known |= heard_covered or set()
            relays = select_relays(
                [(t, self.neighbourhood(t)) for t in targets], known,
                coverage=self.config.preq_relay_coverage,
                penalty={
                    t: battery_penalty(self.neighbours[t].battery, self.neighbours[t].charging)
                    for t in targets
                },
            )
        # Every neighbour has been sent this request: the targets by us now, the others
        # by a copy we heard (that is why they are not targets), so all are covered.
        covered = [self.prefix] + [self.neighbours[t].prefix for t in targets]
        target_set = set(targets)
        covered += [n.prefix for lid, n in self.neighbours.items() if lid not in target_set]
        encoded: dict[bool, bytes] = {}
        for leaf in (False, True):
            body = PathRequest(
                request.origin_seq, request.dst_seq, request.cost,
                (request.flags & ~PREQ_LEAF) | (PREQ_LEAF if leaf else 0),
                tuple(covered[:MAX_NEIGHBOURS_LISTED]), request.origin_announce,
            ).encode()
            encoded[leaf] = Frame(
                frame.type, frame.frame_id, frame.src, frame.dst, body, frame.flags,
                frame.ttl, frame.hops, frame.attempt,
            ).encode()
        for link_id in targets:
            self.send_raw(link_id, encoded[link_id not in relays], "PATH_REQUEST")

    def neighbourhood(self, link_id: LinkId) -> frozenset[bytes] | None:
        """The neighbour's announced neighbours; None when unknown, truncated, or older
        than our link to it (a list that does not name us predates the link: stale)."""
        neighbour = self.neighbours[link_id]
        hood = neighbour.neighbours
        if self.prefix not in hood or neighbour.degree > len(hood):
            return None
        return hood

    def discovery_timeout(self, dst: NodeAddress, request_id: bytes, *, now: float) -> None:
        discovery = self.discoveries.get(dst)
        if discovery is None or discovery.request_id != request_id:
            return
        if discovery.tries < self.config.discovery_tries and self.neighbours:
            self.send_path_request(dst, now=now)
            return
        del self.discoveries[dst]
        self.stats.count_event("discovery_failed")
        low, high = self.config.discovery_backoff
        previous = self.backoff.get(dst)
        period = min(high, previous[1] * 2) if previous is not None else low
        self.backoff[dst] = (now + period, period)
        while len(self.backoff) > self.config.path_capacity:
            self.backoff.pop(next(iter(self.backoff)))
        queue = self.pending.pop(dst, deque())
        self.pending_total -= len(queue)
        for item in queue:
            self.give_up(item, now=now)

    def handle_path_request(self, link_id: LinkId, frame: Frame, *, now: float) -> None:
        if frame.src == self.address:
            return
        request = decode_path_request(frame.body)
        request_id = frame.frame_id
        fresh = request_id not in self.relay_states and request_id not in self.flood_seen
        if fresh and frame.dst != self.address and not self.relay_allowed(link_id, now=now):
            return  # checked before any state is installed: a noisy neighbour pays first
        neighbour = self.neighbours[link_id]
        cost = request.cost / COST_SCALE + self.hop_cost(
            link_id, relay=neighbour.address != frame.src
        )
        self.offer_route(
            frame.src, link_id, frame.hops + 1, cost, request.origin_seq, True,
            self.config.route_lifetime, now=now,
        )
        relay = frame.ttl > 1 and (
            not request.flags & PREQ_LEAF or self.sender_view_stale(link_id, request)
        )
        state = self.relay_states.get(request_id)
        if state is not None:  # a later copy of a request not relayed yet
            state.covered.update(request.covered)
            state.heard_from.add(link_id)
            if relay and not state.relay:  # a LEAF copy came first; now we are a relay
                state.relay = True
                state.frame, state.request = frame, request
                self.schedule_request_relay(request_id, now=now)
            return
        first = self.flood_seen.add(request_id, now=now)
        if frame.dst == self.address:
            self.answer_request(request_id, frame, request, cost, now=now)
            return
        if not first:
            return
        self.relay_states[request_id] = RelayState(
            frame, request, set(request.covered), {link_id}, relay
        )
        while len(self.relay_states) > 1024:
            self.relay_states.popitem(last=False)
        if relay:
            self.schedule_request_relay(request_id, now=now)
        else:
            # Remember a LEAF copy only briefly: a relay copy, if any, comes within jitter.
            self.schedule(now + _LEAF_MEMORY, "preq", request_id)

    def sender_view_stale(self, link_id: LinkId, request: PathRequest) -> bool:
        """A LEAF copy relies on what the sender knew of our neighbours; if we have a
        neighbour it neither covered nor heard of from us, its choice was uninformed."""
        known = self.neighbours[link_id].sent_hood
        covered = set(request.covered)
        return any(
            n.prefix not in known and n.prefix not in covered for n in self.neighbours.values()
        )

    def schedule_request_relay(self, request_id: bytes, *, now: float) -> None:
        low, high = self.config.preq_jitter
        # Low-battery relays wait longer, so that paths through others form first.
        stretch = 1.0 if self.own_battery is None or self.own_battery >= 30 else 3.0
        self.schedule(now + self.rng.uniform(low, high) * stretch, "preq", request_id)

    def relay_request(self, request_id: bytes, *, now: float) -> None:
        state = self.relay_states.pop(request_id, None)
        if state is None or not state.relay:
            return  # a LEAF copy's memory expired
        full = bool(state.request.flags & PREQ_FULL)
        targets = [
            lid for lid, n in self.neighbours.items()
            if lid not in state.heard_from and (full or n.prefix not in state.covered)
        ]
        back = self.table.get(state.frame.src, now=now)
        cost = wire_cost(back.cost) if back is not None else state.request.cost
        request = PathRequest(
            state.request.origin_seq, state.request.dst_seq, cost, state.request.flags,
            (), state.request.origin_announce,
        )
        self.broadcast_request(state.frame.hopped(), request, targets, state.covered)

    def answer_request(
        self, request_id: bytes, frame: Frame, request: PathRequest, cost: float, *, now: float
    ) -> None:
        previous = self.replied.get(request_id)
        if previous is not None:
            best, count = previous
            if count >= _MAX_REPLIES or cost > best - _REPLY_IMPROVEMENT:
                return
        if previous is None and request.origin_announce:
            self.learn_from_announce(frame.src, request.origin_announce)
        self.replied[request_id] = (cost, 1 if previous is None else previous[1] + 1)
        while len(self.replied) > 256:
            self.replied.popitem(last=False)
        min_seq = None
        if not request.flags & PREQ_UNKNOWN_SEQ:
            # AODV §6.6.1: answer with a number at least as new as the one asked for.
            min_seq = request.dst_seq
        announce = decode_announce(self.own.encoded(min_seq=min_seq))
        reply = PathReply(0, int(self.config.route_lifetime), request_id, announce)
        out = Frame(
            FrameType.PATH_REPLY, self.rng.randbytes(8), self.address, frame.src,
            reply.encode(), ttl=self.config.default_ttl,
        )
        self.route_out(Pending(out, False, None, now), now=now)

    def learn_from_announce(self, address: NodeAddress, body: bytes) -> None:
        try:
            record, _ = self.identities.accept(body, claimed=address)
        except MeshdError:
            return
        self.learned(address, record.identity, record.announce.extensions)

    # --- path replies and errors --------------------------------------------------
    def handle_path_reply(self, link_id: LinkId, frame: Frame, *, now: float) -> None:
        reply = decode_path_reply(frame.body)
        try:
            record, _ = self.identities.accept(frame.body[12:], claimed=frame.src)
        except SignatureError as exc:
            self.reject(link_id, f"forged path reply: {exc}")
            return
        self.learned(frame.src, record.identity, record.announce.extensions)
        neighbour = self.neighbours[link_id]
        cost = reply.cost / COST_SCALE + self.hop_cost(
            link_id, relay=neighbour.address != frame.src
        )
        self.offer_route(
            frame.src, link_id, frame.hops + 1, cost, reply.announce.seq, True,
            float(reply.lifetime), now=now,
        )
        if frame.dst == self.address:
            return
        if frame.ttl <= 1:
            return
        onward = PathReply(wire_cost(cost), reply.lifetime, reply.request_id, reply.announce)
        hopped = frame.hopped()
        out = Frame(
            hopped.type, hopped.frame_id, hopped.src, hopped.dst, onward.encode(),
            hopped.flags, hopped.ttl, hopped.hops, hopped.attempt,
        )
        self.route_out(Pending(out, False, link_id, now), now=now)

    def offer_route(
        self, dst: NodeAddress, link_id: LinkId, hops: int, cost: float, seq: int,
        seq_valid: bool, lifetime: float, *, now: float,
    ) -> None:
        if dst == self.address or dst.is_broadcast:
            return
        had = self.can_route(dst)
        route, changed = self.table.offer(
            dst, link_id=link_id, next_hop=self.neighbours[link_id].address, hops=hops,
            cost=cost, seq=seq, seq_valid=seq_valid, expires_at=now + lifetime, now=now,
        )
        if changed:
            self.emit(PathChanged(dst, route.next_hop, route.hops, route.cost))
        if not had:
            self.path_appeared(dst, now=now)
        elif changed and dst in self.pending:
            self.flush_pending(dst, now=now)

    def send_path_error(
        self, link_id: LinkId, unreachable: list[tuple[NodeAddress, int]], *, now: float
    ) -> None:
        neighbour = self.neighbours.get(link_id)
        if neighbour is None:
            return
        for start in range(0, len(unreachable), MAX_PATH_ERRORS):
            body = PathError(tuple(unreachable[start : start + MAX_PATH_ERRORS])).encode()
            frame = Frame(
                FrameType.PATH_ERROR, self.rng.randbytes(8), self.address, neighbour.address,
                body, ttl=1,
            )
            self.transmit(link_id, frame, local=False, upstream=None, now=now)

    def handle_path_error(self, link_id: LinkId, frame: Frame, *, now: float) -> None:
        error = decode_path_error(frame.body)
        onward: dict[LinkId, list[tuple[NodeAddress, int]]] = {}
        for dst, seq in error.unreachable:
            route = self.table.get(dst, now=now)
            if route is None or route.link_id != link_id:
                continue
            self.table.remove(dst)
            self.emit(PathChanged(dst, None, 0, 0.0))
            for precursor in route.precursors:
                if precursor != link_id:
                    onward.setdefault(precursor, []).append((dst, max(seq, route.seq)))
        for precursor, unreachable in onward.items():
            self.send_path_error(precursor, unreachable, now=now)

    # --- timers -------------------------------------------------------------------
    def run_timers(self, *, now: float) -> None:
        for item in self.retransmit_due(now=now):
            self.link_failing(item, now=now)
        for kind, payload in self.pop_due_timers(now):
            if kind == "preq":
                assert isinstance(payload, bytes)
                self.relay_request(payload, now=now)
            elif kind == "flood":
                assert isinstance(payload, tuple)
                self.relay_flood(payload, now=now)
            elif kind == "discovery":
                assert isinstance(payload, tuple)
                self.discovery_timeout(payload[0], payload[1], now=now)
            elif kind == "announce":
                self.periodic_announce(now=now)
                interval = self.config.announce_interval
                self.schedule(now + interval * self.rng.uniform(0.9, 1.1), "announce", None)
            elif kind == "reannounce":
                self._reannounce_pending = False
                self._last_reannounce = now
                self.recompute_clusters(now=now)
                self.announce_to(list(self.neighbours))
            elif kind == "cluster":
                # Every tick, not only when dirty: links settle as time passes.
                self.recompute_clusters(now=now)
                self.schedule(now + self.config.cluster_interval, "cluster", None)
            elif kind == "sweep":
                self.sweep(now=now)
                self.schedule(now + 30.0, "sweep", None)

    def link_failing(self, item: InFlight, *, now: float) -> None:
        """Hop-by-hop retries exhausted: paths via that neighbour are suspect."""
        if item.frame.type == FrameType.PATH_ERROR:
            return
        if item.link_id in self.neighbours:
            self.invalidate_link(item.link_id, now=now)
        neighbour = self.neighbours.get(item.link_id)
        if neighbour is not None and item.frame.dst == neighbour.address:
            self.give_up(Pending(item.frame, item.local, item.upstream, now), now=now)
            return
        self.reroute(item, now=now)

    def sweep(self, *, now: float) -> None:
        self.table.sweep(now=now)
        self.rx_seen.expire(now=now)
        self.flood_seen.expire(now=now)
        for dst in [d for d, (until, _) in self.backoff.items() if until + 600 < now]:
            del self.backoff[dst]
        limit = now - self.config.pending_max_wait
        for dst in list(self.pending):
            queue = self.pending[dst]
            while queue and queue[0].queued_at < limit:
                self.pending_total -= 1
                self.give_up(queue.popleft(), now=now)
            if not queue:
                del self.pending[dst]
