"""Controlled flooding: FLOOD frames from the endpoint and the fallback after a failed
discovery. REFERENCE: TTL, fan-out 3, relay jitter 20-200 ms; each node relays a
(frame id, attempt) once, to neighbours it has not heard it from, and a relay that knows
a path leaves the flood and forwards unicast (hop-by-hop reliable).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass

from meshd.crypto.identity import Identity
from meshd.router.events import LinkId
from meshd.router.frames import Frame, FrameFlags
from meshd.router.routing import ENDPOINT_TYPES, EndpointHooks, RouterBase, RouterConfig


@dataclass(slots=True)
class FloodState:
    frame: Frame
    heard_from: set[LinkId]



class FloodingRouter(RouterBase):
    """RouterBase plus controlled flooding."""

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
        self.flood_states: OrderedDict[tuple[bytes, int], FloodState] = OrderedDict()

    # --- controlled flooding (fallback, and FLOOD frames from the endpoint) ----------
    def flood_out(self, frame: Frame, *, now: float) -> None:
        flooded = Frame(
            frame.type, frame.frame_id, frame.src, frame.dst, frame.body,
            frame.flags | FrameFlags.FLOOD, min(frame.ttl, self.config.flood_ttl),
            frame.hops, frame.attempt,
        )
        self.flood_seen.add(("flood", frame.frame_id, frame.attempt), now=now)
        data = flooded.encode()
        for link_id in self.neighbours:
            self.send_raw(link_id, data, "FLOOD_" + frame.type.name)

    def handle_flooded(self, link_id: LinkId, frame: Frame, *, now: float) -> None:
        key = (frame.frame_id, frame.attempt)
        state = self.flood_states.get(key)
        if state is not None:
            state.heard_from.add(link_id)
            return
        if not self.flood_seen.add(("flood", *key), now=now):
            return
        if frame.type not in ENDPOINT_TYPES:
            self.reject(link_id, f"{frame.type.name} cannot be flooded")
            return
        if frame.dst != self.address and not self.relay_allowed(link_id, now=now):
            return
        neighbour = self.neighbours[link_id]
        self.offer_route(
            frame.src, link_id, frame.hops + 1,
            float(frame.hops) + self.hop_cost(link_id, relay=neighbour.address != frame.src),
            0, False, self.config.route_lifetime, now=now,
        )
        if frame.dst == self.address:
            self.endpoint.on_local_frame(frame, now=now, key_of=self.key_of)
            return
        if frame.ttl <= 1:
            return
        self.flood_states[key] = FloodState(frame.hopped(), {link_id})
        while len(self.flood_states) > 1024:
            self.flood_states.popitem(last=False)
        low, high = self.config.flood_jitter
        self.schedule(now + self.rng.uniform(low, high), "flood", key)

    def relay_flood(self, key: tuple[bytes, int], *, now: float) -> None:
        state = self.flood_states.pop(key, None)
        if state is None:
            return
        frame = state.frame
        hop = self.next_hop(frame.dst, now=now)
        if hop is not None and hop[0] not in state.heard_from:
            # We know a path: leave the flood and go unicast (hop-by-hop reliable).
            unicast = Frame(
                frame.type, frame.frame_id, frame.src, frame.dst, frame.body,
                frame.flags & ~FrameFlags.FLOOD, frame.ttl, frame.hops, frame.attempt,
            )
            self.transmit(hop[0], unicast, local=False, upstream=None, now=now)
            return
        targets = [lid for lid in self.neighbours if lid not in state.heard_from]
        self.rng.shuffle(targets)
        data = frame.encode()
        for link_id in targets[: self.config.flood_fanout]:
            self.send_raw(link_id, data, "FLOOD_" + frame.type.name)
