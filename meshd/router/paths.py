"""The path table: best next hop per destination, AODV-style (RFC 3561 §6.1-6.2).

A route is replaced only by fresher information (a higher destination sequence number)
or, at equal sequence number, by a cheaper path; that rule is what keeps paths loop free.
Invalidated routes leave their sequence number behind so later requests ask for fresher.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from meshd.address import NodeAddress
from meshd.router.events import LinkId
from meshd.router.types import RouteInfo


def seq_newer(a: int, b: int) -> bool:
    """``a`` is newer than ``b`` in 32-bit serial arithmetic (RFC 3561 §6.1, RFC 1982)."""
    return a != b and ((a - b) & 0xFFFFFFFF) < 0x80000000


@dataclass(slots=True)
class Route:
    dst: NodeAddress
    link_id: LinkId
    next_hop: NodeAddress
    hops: int
    cost: float
    seq: int
    seq_valid: bool
    expires_at: float
    precursors: set[LinkId] = field(default_factory=set)

    def info(self) -> RouteInfo:
        return RouteInfo(self.dst, self.next_hop, self.hops, self.cost, self.expires_at)


class PathTable:
    """Routes by destination plus an index by next-hop link (O(routes via link) on failure)."""

    def __init__(self, *, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._routes: OrderedDict[NodeAddress, Route] = OrderedDict()
        self._by_link: dict[LinkId, set[NodeAddress]] = {}
        self._last_seq: OrderedDict[NodeAddress, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._routes)

    def get(self, dst: NodeAddress, *, now: float) -> Route | None:
        route = self._routes.get(dst)
        if route is None:
            return None
        if route.expires_at <= now:
            self.remove(dst)
            return None
        return route

    def last_seq(self, dst: NodeAddress) -> int | None:
        route = self._routes.get(dst)
        if route is not None and route.seq_valid:
            return route.seq
        return self._last_seq.get(dst)

    def offer(
        self,
        dst: NodeAddress,
        *,
        link_id: LinkId,
        next_hop: NodeAddress,
        hops: int,
        cost: float,
        seq: int,
        seq_valid: bool,
        expires_at: float,
        now: float,
    ) -> tuple[Route, bool]:
        """Install the route if it is fresher or cheaper; returns (current route, changed)."""
        old = self.get(dst, now=now)
        if old is not None:
            better = (
                (seq_valid and not old.seq_valid)
                or (seq_valid and seq_newer(seq, old.seq))
                or (seq_valid == old.seq_valid and seq == old.seq and cost < old.cost - 1e-6)
                or (not seq_valid and not old.seq_valid and cost < old.cost - 1e-6)
            )
            if not better:
                if old.link_id == link_id and seq == old.seq:
                    old.expires_at = max(old.expires_at, expires_at)
                return old, False
            if old.link_id != link_id:
                self._unindex(old)
            precursors = old.precursors
        else:
            precursors = set()
        route = Route(dst, link_id, next_hop, hops, cost, seq, seq_valid, expires_at, precursors)
        self._routes[dst] = route
        self._routes.move_to_end(dst)
        self._by_link.setdefault(link_id, set()).add(dst)
        while len(self._routes) > self.capacity:
            _, evicted = self._routes.popitem(last=False)
            self._unindex(evicted)
        changed = old is None or old.link_id != link_id or abs(old.cost - cost) > 1e-6
        return route, changed

    def remove(self, dst: NodeAddress) -> Route | None:
        route = self._routes.pop(dst, None)
        if route is not None:
            self._unindex(route)
            if route.seq_valid:
                self._last_seq[dst] = route.seq
                self._last_seq.move_to_end(dst)
                while len(self._last_seq) > self.capacity:
                    self._last_seq.popitem(last=False)
        return route

    def via_link(self, link_id: LinkId) -> list[Route]:
        return [self._routes[d] for d in self._by_link.get(link_id, ()) if d in self._routes]

    def drop_precursor(self, link_id: LinkId) -> None:
        """A link went down: it is nobody's upstream any more (O(routes) but rare)."""
        for route in self._routes.values():
            route.precursors.discard(link_id)

    def routes(self, *, now: float) -> list[Route]:
        return [r for r in self._routes.values() if r.expires_at > now]

    def sweep(self, *, now: float) -> None:
        for dst in [d for d, r in self._routes.items() if r.expires_at <= now]:
            self.remove(dst)

    def _unindex(self, route: Route) -> None:
        dsts = self._by_link.get(route.link_id)
        if dsts is not None:
            dsts.discard(route.dst)
            if not dsts:
                del self._by_link[route.link_id]
