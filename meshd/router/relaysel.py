"""Choosing which recipients of a path request relay it (MPR-style, RFC 3626 §8.3.1).

Each link send is a transmission, so a node sends a request only to neighbours no copy
has covered, and of those only a few relay: a greedy set cover of the 2-hop nodes the
recipients reach (from their announced neighbour lists) that are not covered yet. The
others get the request marked LEAF (they learn the reverse path and may answer, but do
not relay). Recipients whose neighbourhood we do not know always relay.
"""

from __future__ import annotations

from meshd.router.events import LinkId


def select_relays(
    targets: list[tuple[LinkId, frozenset[bytes] | None]], covered: set[bytes]
) -> set[LinkId]:
    """Links whose recipients must relay; ``None`` neighbourhoods are unknown."""
    relays = {link for link, hood in targets if hood is None}
    remaining: set[bytes] = set()
    for _, hood in targets:
        if hood is not None:
            remaining.update(hood - covered)
    candidates = [(link, hood) for link, hood in targets if hood is not None]
    while remaining and candidates:
        best_index = max(range(len(candidates)), key=lambda i: len(candidates[i][1] & remaining))
        link, hood = candidates.pop(best_index)
        gain = hood & remaining
        if not gain:
            break
        relays.add(link)
        remaining -= gain
    return relays
