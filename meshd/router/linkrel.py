"""Hop-by-hop reliability: every unicast routed frame a node sends on a link is LINK_ACKed
by the receiver and retransmitted after a timeout, a few times, before the link is
considered failing for that destination.

Why: at 5 % loss per link an 11-hop path loses ~43 % of data + ACK round trips end to end
(1 - 0.95^22); with 4 link-level retransmissions a hop fails with ~1e-5 probability.
RTO follows RFC 6298 (SRTT/RTTVAR, Karn's rule: no samples from retransmitted frames),
with a 0.3 s floor and 1 s initial value.

Size-aware: RFC 6298 assumes a frame's transmission time is small next to the RTT. On a
BLE link at ATT MTU 23 a 50 KB frame takes ~4 s to go out, so a bare RTO retransmitted it
several times while the first copy was still on its way and the router gave the path up.
So each link also has a throughput estimate (bytes/s: the transport's ``LinkInfo.bitrate``,
a per-kind prior, then learned from the ACKs of large frames) and a projection of when its
queued bytes are out (``busy_until``): a frame's deadline is its expected end of
transmission (after those queued before it) + RTO. The SRTT then measures the latency
part only (the estimated transmission time is taken off each sample).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from meshd.router.events import LinkId
from meshd.router.frames import Frame
from meshd.router.types import LinkInfo, LinkKind

INITIAL_RTO = 1.0
MIN_RTO = 0.3
MAX_RTO = 8.0
QUALITY_ALPHA = 0.1  # EWMA weight of one hop-by-hop outcome
# Frames from this size on, sent on an idle link, give throughput samples: below it the
# transmission time is lost in the RTT's noise (4 KiB on BLE at ~10 KB/s: ~0.4 s). Frames
# sent behind others are not sampled: their ACK delay is queueing, ACK batching and the
# receiver's fsync (1 KiB app messages in a burst over TCP would read as ~20 KB/s).
LARGE_FRAME = 4096
THROUGHPUT_ALPHA = 0.25  # EWMA weight of one throughput sample
MIN_THROUGHPUT = 500.0  # bytes/s: a floor, so one slow sample cannot stall a link for hours
MAX_THROUGHPUT = 1e9
# Priors (bytes/s) until a link reports or shows its rate. BLE: at ATT MTU 23 (20 bytes
# per write) a 50 KB frame took ~4 s (~12 KB/s); the prior errs low, since too low only
# delays the retransmission of a frame really lost, while too high repeats a 50 KB frame
# that is still going out. Other kinds are fast enough for RTO alone until measured.
THROUGHPUT_PRIOR: dict[LinkKind, float] = {LinkKind.BLE: 10_000.0}


def link_throughput(info: LinkInfo) -> float | None:
    """Bytes/s to assume for a link as it comes up (its ``bitrate``, else the prior)."""
    if info.bitrate is not None and info.bitrate > 0:
        return info.bitrate / 8.0
    return THROUGHPUT_PRIOR.get(info.kind)


@dataclass(slots=True)
class InFlight:
    link_id: LinkId
    frame: Frame
    data: bytes
    local: bool  # originated by this node (never dropped for queue pressure first)
    upstream: LinkId | None
    sent_at: float
    deadline: float
    tries: int = 1
    start: float = 0.0  # when it was expected to start going out (after frames before it)
    tx: float = 0.0  # its expected transmission time when sent
    alone: bool = False  # nothing else was in flight on the link when it was sent


class LinkStats:
    __slots__ = ("busy_until", "inflight", "quality", "rttvar", "srtt", "throughput")

    def __init__(self, quality: float, throughput: float | None = None) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.quality = quality
        self.inflight: dict[tuple[bytes, int], InFlight] = {}
        self.throughput = throughput  # bytes/s; None: fast enough not to matter (yet)
        self.busy_until = 0.0  # when the bytes queued so far are expected out

    def tx_time(self, size: int) -> float:
        return size / self.throughput if self.throughput else 0.0

    def enqueue(self, size: int, *, now: float) -> tuple[float, float]:
        """(start, end) of a frame's transmission behind the bytes queued before it."""
        start = max(now, self.busy_until)
        end = start + self.tx_time(size)
        self.busy_until = end
        return start, end

    def sample_throughput(self, size: int, elapsed: float) -> None:
        """``elapsed``: from its expected start to the ACK, latency (SRTT) taken off."""
        measured = size / max(elapsed, 1e-3)
        measured = min(MAX_THROUGHPUT, max(MIN_THROUGHPUT, measured))
        if self.throughput is None:
            self.throughput = measured
        else:
            # Averaged as time per byte: one sample far off (an ACK quicker than the
            # projected queue) moves the transmission-time estimate by at most ALPHA.
            per_byte = 1.0 / self.throughput
            per_byte += THROUGHPUT_ALPHA * (1.0 / measured - per_byte)
            self.throughput = 1.0 / per_byte

    @property
    def rto(self) -> float:
        if self.srtt is None:
            return INITIAL_RTO
        return min(MAX_RTO, max(MIN_RTO, self.srtt + 4 * self.rttvar))

    def sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt

    def outcome(self, ok: bool) -> None:
        self.quality += QUALITY_ALPHA * ((1.0 if ok else 0.0) - self.quality)


class LinkReliability:
    """Per-link in-flight tables with one lazy-deletion timer heap for all links."""

    def __init__(self, *, max_tries: int = 5, max_inflight: int = 256) -> None:
        self.max_tries = max_tries
        self.max_inflight = max_inflight
        self.links: dict[LinkId, LinkStats] = {}
        self._heap: list[tuple[float, int, LinkId, tuple[bytes, int]]] = []
        self._counter = 0

    def add_link(self, link_id: LinkId, quality: float, throughput: float | None = None) -> None:
        self.links[link_id] = LinkStats(quality, throughput)

    def set_throughput(self, link_id: LinkId, throughput: float | None) -> None:
        """The transport's figure (or a prior) in bytes/s; samples refine it from here."""
        stats = self.links.get(link_id)
        if stats is not None:
            stats.throughput = throughput

    def throughput(self, link_id: LinkId) -> float | None:
        stats = self.links.get(link_id)
        return stats.throughput if stats is not None else None

    def remove_link(self, link_id: LinkId) -> list[InFlight]:
        stats = self.links.pop(link_id, None)
        return list(stats.inflight.values()) if stats is not None else []

    def quality(self, link_id: LinkId) -> float:
        stats = self.links.get(link_id)
        return stats.quality if stats is not None else 0.0

    def track(
        self, link_id: LinkId, frame: Frame, data: bytes, *, local: bool,
        upstream: LinkId | None, now: float,
    ) -> bool:
        """Remember a frame just sent; False when the link's queue is full (caller drops)."""
        stats = self.links.get(link_id)
        if stats is None:
            return False
        limit = self.max_inflight * (2 if local else 1)
        if len(stats.inflight) >= limit:
            return False
        key = frame.dedup_key
        alone = not stats.inflight
        start, end = stats.enqueue(len(data), now=now)
        item = InFlight(link_id, frame, data, local, upstream, now, end + stats.rto,
                        start=start, tx=end - start, alone=alone)
        stats.inflight[key] = item
        self._push(item, key)
        return True

    def acked(self, link_id: LinkId, key: tuple[bytes, int], *, now: float) -> InFlight | None:
        stats = self.links.get(link_id)
        if stats is None:
            return None
        item = stats.inflight.pop(key, None)
        if item is None:
            return None
        if item.tries == 1:  # Karn: a retransmitted frame's ACK is ambiguous
            since_start = now - item.start
            if item.alone and len(item.data) >= LARGE_FRAME:
                stats.sample_throughput(len(item.data), since_start - (stats.srtt or 0.0))
            stats.sample(max(0.0, since_start - item.tx))
            # It went out sooner than projected: so will the frames queued behind it.
            stats.busy_until = min(stats.busy_until,
                                   now + max(0.0, stats.busy_until - item.start - item.tx))
        elif stats.throughput is None and item.alone and len(item.data) >= LARGE_FRAME:
            # Ambiguous, but on a link thought fast a large frame needed more than an RTO:
            # seed a low estimate (bytes over all the time since its first start), which
            # first-try samples then correct. Without it a slow link with no prior would
            # repeat every large frame at RTO for ever (Karn allows no sample).
            stats.sample_throughput(len(item.data), now - item.start)
        stats.outcome(True)
        return item

    def due(self, *, now: float) -> tuple[list[InFlight], list[InFlight]]:
        """(frames to retransmit now, frames whose retries are exhausted)."""
        resend: list[InFlight] = []
        failed: list[InFlight] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, link_id, key = heapq.heappop(heap)
            stats = self.links.get(link_id)
            item = stats.inflight.get(key) if stats is not None else None
            if stats is None or item is None or item.deadline != deadline:
                continue
            stats.outcome(False)
            if item.tries >= self.max_tries:
                del stats.inflight[key]
                failed.append(item)
                continue
            item.tries += 1
            # Exponential backoff per retry (RFC 6298 §5.5), capped; the copy queues behind
            # what the link has yet to send.
            _, end = stats.enqueue(len(item.data), now=now)
            item.deadline = end + min(MAX_RTO, stats.rto * (1.5 ** (item.tries - 1)))
            self._push(item, key)
            resend.append(item)
        return resend, failed

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap:
            deadline, _, link_id, key = heap[0]
            stats = self.links.get(link_id)
            item = stats.inflight.get(key) if stats is not None else None
            if item is not None and item.deadline == deadline:
                return deadline
            heapq.heappop(heap)
        return None

    def inflight_count(self) -> int:
        return sum(len(s.inflight) for s in self.links.values())

    def _push(self, item: InFlight, key: tuple[bytes, int]) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (item.deadline, self._counter, item.link_id, key))
