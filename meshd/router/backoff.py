"""End-to-end retry timing: policy, per-destination RTT estimate, and a lazy deadline heap."""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from meshd.address import NodeAddress

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Timing of end-to-end retries and custody hand-offs.

    The reference SDK waits 10 s for an ACK then backs off 1 s x2 up to 300 s. Here every
    hop already retransmits (link ACKs), so an end-to-end loss is rare and the first e2e
    timeout can be short: ``initial_rto`` until an RTT was measured for the destination,
    then RFC 6298's SRTT + 4*RTTVAR (which scales with path length by itself).
    """

    initial_rto: float = 3.0
    min_rto: float = 1.0
    max_rto: float = 60.0  # the largest *base* timeout; doublings are capped by backoff_cap
    backoff_factor: float = 2.0
    backoff_cap: float = 300.0
    jitter: float = 0.2  # +-20 %, so that many senders do not retry in lock step
    # A frame sent with no known route waits for the router's discovery (2.5 s doubling,
    # 3 tries: 17.5 s) before the end-to-end layer tries again.
    unroutable_wait: float = 30.0
    custody_first_try: float = 5.0  # a relay that just failed to route waits a little
    # Custodian: an unroutable destination is probed this often (+-jitter). Cheap: the
    # router rate-limits discoveries per destination itself (10 s doubling to 300 s) and
    # gives a probe up at once inside that backoff.
    probe_interval: float = 120.0
    # Sender, message held by a custodian: from 600 s after it was held (or when a path
    # appears >= 600 s after the last probe), re-send it when routable, with the usual
    # backoff, until confirmed; while unroutable, look again 600 s x2 .. 6 h later.
    held_probe_interval: float = 600.0
    held_probe_cap: float = 6 * 3600.0
    restore_spread: float = 30.0  # restored messages are spread over up to this long
    seen_capacity: int = 65_536  # destination dedup entries (about 120 bytes each)
    reack_gap: float = 1.0  # answer duplicates at most this often per message
    rtt_table_size: int = 4096


class RttTable:
    """Smoothed RTT per destination (RFC 6298 section 2), bounded LRU."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self._table: OrderedDict[NodeAddress, tuple[float, float]] = OrderedDict()

    def sample(self, dst: NodeAddress, rtt: float) -> None:
        rtt = max(rtt, 0.0)
        old = self._table.pop(dst, None)
        if old is None:
            srtt, rttvar = rtt, rtt / 2
        else:
            srtt, rttvar = old
            rttvar = 0.75 * rttvar + 0.25 * abs(srtt - rtt)
            srtt = 0.875 * srtt + 0.125 * rtt
        self._table[dst] = (srtt, rttvar)
        while len(self._table) > self._policy.rtt_table_size:
            self._table.popitem(last=False)

    def rto(self, dst: NodeAddress) -> float:
        entry = self._table.get(dst)
        if entry is None:
            return self._policy.initial_rto
        srtt, rttvar = entry
        return min(self._policy.max_rto, max(self._policy.min_rto, srtt + 4 * rttvar))

    def srtt(self, dst: NodeAddress) -> float | None:
        entry = self._table.get(dst)
        return None if entry is None else entry[0]


def backoff_delay(base: float, tries: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Delay before the next try after ``tries`` earlier ones (0: the first timeout)."""
    delay = min(policy.backoff_cap, base * policy.backoff_factor ** min(tries, 32))
    return delay * rng.uniform(1.0 - policy.jitter, 1.0 + policy.jitter)


class DeadlineHeap(Generic[K]):
    """Timers keyed by K; rescheduling leaves stale heap items that are skipped lazily."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._due)

    def set(self, key: K, when: float) -> None:
        self._due[key] = when
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, key))
        if len(self._heap) > 4 * len(self._due) + 64:
            self._compact()

    def cancel(self, key: K) -> None:
        self._due.pop(key, None)

    def due_at(self, key: K) -> float | None:
        return self._due.get(key)

    def peek(self) -> float | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> K | None:
        """The key of one timer due at ``now`` (and unset it), or None."""
        self._drop_stale()
        if not self._heap or self._heap[0][0] > now:
            return None
        _, _, key = heapq.heappop(self._heap)
        del self._due[key]
        return key

    def _drop_stale(self) -> None:
        heap = self._heap
        while heap:
            when, _, key = heap[0]
            if self._due.get(key) == when:
                return
            heapq.heappop(heap)

    def _compact(self) -> None:
        self._heap = [item for item in self._heap if self._due.get(item[2]) == item[0]]
        # Keep one item per key even if two share the same deadline.
        seen: set[K] = set()
        unique = []
        for item in sorted(self._heap):
            if item[2] not in seen:
                seen.add(item[2])
                unique.append(item)
        self._heap = unique
        heapq.heapify(self._heap)


class ProbeGate:
    """Destinations with no known route: one probe at a time, the others wait until then."""

    def __init__(self) -> None:
        self._until: dict[NodeAddress, float] = {}

    def may_probe(self, dst: NodeAddress, now: float) -> bool:
        until = self._until.get(dst)
        return until is None or until <= now

    def until(self, dst: NodeAddress, now: float) -> float:
        return self._until.get(dst, now)

    def hold(self, dst: NodeAddress, until: float) -> None:
        self._until[dst] = max(until, self._until.get(dst, until))

    def clear(self, dst: NodeAddress) -> None:
        self._until.pop(dst, None)

    def prune(self, now: float) -> None:
        if len(self._until) > 1024:
            self._until = {d: t for d, t in self._until.items() if t > now}


def retry_at(
    now: float, last_sent: float | None, in_router: bool, route_failed: bool, rto: float,
    router_wait: float,
) -> float | None:
    """When a path appears: None while the router still holds our copy, else how soon."""
    if route_failed or last_sent is None:
        return now
    if in_router and now - last_sent < router_wait:
        return None  # it flushes that copy itself now; another would be a duplicate
    return max(now, last_sent + rto)
