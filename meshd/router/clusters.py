"""Clusters and link advice (REFERENCE "Clusters": cluster signature = XOR of neighbours'
node hashes; a candidate whose neighbourhood differs by > 30 % is a bridge and is kept).

Connection-limited transports (BLE: a handful of links per adapter) follow the advice:
keep the best-scored links plus every bridge, drop the rest.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from meshd.router.bodies import BATTERY_UNKNOWN
from meshd.router.events import LinkId
from meshd.router.types import LinkKind

BRIDGE_DIFFERENCE = 0.30
SWAP_MARGIN = 0.05  # REFERENCE: swap a kept link only for one >= 5 % better
LIMITED_KINDS = frozenset({LinkKind.BLE})


@dataclass(frozen=True, slots=True)
class LinkView:
    link_id: LinkId
    prefix: bytes  # the neighbour's 4-byte address prefix
    kind: LinkKind
    quality: float
    battery: int | None
    rssi: int | None
    neighbours: frozenset[bytes]  # the neighbour's own neighbours (from its announce)
    settled: bool = True  # up long enough and announced: advice may drop it
    kept: bool = True  # the current advice (hysteresis)


def cluster_signature(own_prefix: bytes, neighbour_prefixes: Iterable[bytes]) -> int:
    """XOR of the 4-byte hashes of the node and its neighbours (REFERENCE)."""
    value = int.from_bytes(own_prefix, "big")
    for prefix in neighbour_prefixes:
        value ^= int.from_bytes(prefix, "big")
    return value


def rssi_score(rssi: int | None) -> float:
    """REFERENCE's DORS curve: >= -50 dBm 1.0, -70 0.7, -85 0.4, -100 0."""
    if rssi is None:
        return 0.7
    points = ((-100, 0.0), (-85, 0.4), (-70, 0.7), (-50, 1.0))
    if rssi <= points[0][0]:
        return 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if rssi <= x1:
            return y0 + (y1 - y0) * (rssi - x0) / (x1 - x0)
    return 1.0


def link_score(view: LinkView) -> float:
    battery = 0.5 if view.battery in (None, BATTERY_UNKNOWN) else view.battery / 100
    return 0.35 * rssi_score(view.rssi) + 0.35 * view.quality + 0.30 * battery


def is_bridge(own_neighbours: frozenset[bytes], own_prefix: bytes, view: LinkView) -> bool:
    if not view.neighbours:
        return False
    outside = view.neighbours - own_neighbours - {own_prefix}
    return len(outside) / len(view.neighbours) > BRIDGE_DIFFERENCE


def advise(
    own_prefix: bytes, views: list[LinkView], *, max_links: int
) -> dict[LinkId, tuple[bool, str]]:
    """Keep/drop advice per link: (keep, reason)."""
    own_neighbours = frozenset(v.prefix for v in views)
    advice: dict[LinkId, tuple[bool, str]] = {}
    limited = [v for v in views if v.kind in LIMITED_KINDS]
    for view in views:
        if view.kind not in LIMITED_KINDS:
            advice[view.link_id] = (True, "unlimited transport")
    ranked = sorted(
        limited, key=lambda v: link_score(v) + (SWAP_MARGIN if v.kept else 0.0), reverse=True
    )
    kept = 0
    for view in ranked:
        if not view.settled:
            # REFERENCE: stability window before acting; a link we know nothing about yet
            # could be a bridge, and dropping then re-adding a BLE link is expensive.
            advice[view.link_id] = (True, "settling")
        elif is_bridge(own_neighbours, own_prefix, view):
            advice[view.link_id] = (True, "bridge")
        elif kept < max_links:
            kept += 1
            advice[view.link_id] = (True, "best scored")
        else:
            advice[view.link_id] = (False, "surplus")
    return advice
