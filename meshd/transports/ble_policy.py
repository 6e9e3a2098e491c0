"""Whom a BLE central connects to, when it scans, and which links it drops (sans-IO).

Inputs are what the advertisement summary says (``ble_advert``), the RSSI, what we are
linked to, and the router's advice (``Transport.advise``); outputs are decisions. Rules:

- One link per pair: the node with the smaller address prefix is the central. The
  larger one connects only to a peer that has been in view for ``grace`` seconds without
  linking to it (e.g. the smaller one is full or scans rarely on a low battery).
- Never connect to a node that has no free slot, or when our own links are at the bound.
- Prefer peers of another cluster (a bridge joins two clusters: the router's cluster
  view, REFERENCE "Clusters"), then a stronger signal, then a fuller battery.
- Rebalance: at the bound with a candidate waiting, drop one link the router advised
  dropping (keep=False), the oldest first; never drop a kept link to make room.
- Scan duty cycle by battery: continuous on mains/charging, shorter windows and longer
  pauses as the battery falls (REFERENCE: low battery is 20 %).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshd.router.clusters import rssi_score
from meshd.transports.ble_advert import AdvertSummary


@dataclass(frozen=True, slots=True)
class Candidate:
    device: str  # BLE device address (MAC), what the central connects to
    summary: AdvertSummary
    rssi: int | None
    first_seen: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class LinkView:
    link_id: int
    addr: bytes  # the peer's 2-byte address prefix
    keep: bool  # router advice
    up_since: float


def scan_duty(battery: int | None, charging: bool) -> tuple[float, float]:
    """(seconds scanning, seconds paused) per cycle."""
    if battery is None or charging or battery >= 50:
        return 10.0, 0.0  # continuous (restarted every 10 s to refresh the view)
    if battery >= 20:
        return 3.0, 6.0
    return 1.0, 20.0


def should_initiate(own: bytes, peer: bytes, *, seen_for: float, grace: float) -> bool:
    """The smaller prefix connects; the larger after ``grace`` seconds of waiting."""
    return own < peer or seen_for >= grace


def rank(
    candidates: list[Candidate],
    *,
    own_addr: bytes,
    own_cluster: int,
    linked: set[bytes],
    busy: set[str],
    now: float,
    grace: float,
    stale_after: float = 30.0,
) -> list[Candidate]:
    """Candidates worth connecting to, best first."""
    out = []
    for cand in candidates:
        s = cand.summary
        if cand.device in busy or s.addr in linked or s.addr == own_addr:
            continue
        if s.free_slots == 0 or now - cand.last_seen > stale_after:
            continue
        if not should_initiate(own_addr, s.addr, seen_for=now - cand.first_seen, grace=grace):
            continue
        out.append(cand)

    def score(cand: Candidate) -> tuple[int, float, int]:
        s = cand.summary
        bridge = int(bool(own_cluster) and bool(s.cluster) and s.cluster != own_cluster)
        battery = 100 if s.battery is None or s.charging else s.battery
        return (bridge, rssi_score(cand.rssi), battery)

    return sorted(out, key=score, reverse=True)


def plan(
    links: list[LinkView],
    *,
    max_links: int,
    waiting: int,
) -> tuple[list[int], int]:
    """(links to drop, connections to open now) given ``waiting`` ranked candidates."""
    drop: list[int] = []
    advised = sorted((v for v in links if not v.keep), key=lambda v: v.up_since)
    count = len(links)
    while count > max_links and advised:  # over the bound (e.g. max_links lowered)
        drop.append(advised.pop(0).link_id)
        count -= 1
    room = max(0, max_links - count)
    if waiting > room and advised:  # rebalance: trade one advised-drop link
        drop.append(advised.pop(0).link_id)
        room += 1
    return drop, min(room, waiting)


def free_slots(links: int, max_links: int) -> int:
    return max(0, max_links - links)
