"""Choosing which recipients of a path request relay it (MPR-style, RFC 3626 §8.3.1).

Each link send is a transmission, so a node sends a request only to neighbours no copy
has covered, and of those only a few relay: a greedy set cover of the 2-hop nodes the
recipients reach (from their announced neighbour lists) that are not covered yet, each
by ``coverage`` relays where possible (RFC 7181's MPR_COVERAGE: one lost copy at 5 %
link loss must not cut off a whole region). The others get the request marked LEAF
(they learn the reverse path and may answer, but do not relay). Recipients whose
neighbourhood we do not know always relay.
"""

from __future__ import annotations

from meshd.router.events import LinkId


def select_relays(
    targets: list[tuple[LinkId, frozenset[bytes] | None]],
    covered: set[bytes],
    *,
    coverage: int = 1,
    penalty: dict[LinkId, float] | None = None,
) -> set[LinkId]:
    """Links whose recipients must relay; ``None`` neighbourhoods are unknown.

    ``penalty`` (relay battery penalty per link) divides a candidate's gain, so a
    low-battery neighbour relays only when it reaches what others cannot.
    """
    penalty = penalty or {}
    relays = {link for link, hood in targets if hood is None}
    candidates = [(link, hood - covered) for link, hood in targets if hood is not None]
    reachable: dict[bytes, int] = {}
    for _, hood in candidates:
        for node in hood:
            reachable[node] = reachable.get(node, 0) + 1
    # How many more relays each 2-hop node still needs (never more than can reach it).
    need = {node: min(coverage, count) for node, count in reachable.items()}
    while candidates:
        best = max(
            range(len(candidates)),
            key=lambda i: sum(1 for n in candidates[i][1] if need.get(n, 0) > 0)
            / (1.0 + penalty.get(candidates[i][0], 0.0)),
        )
        link, hood = candidates.pop(best)
        useful = [n for n in hood if need.get(n, 0) > 0]
        if not useful:
            break
        relays.add(link)
        for node in useful:
            need[node] -= 1
    return relays
