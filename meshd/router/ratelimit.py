"""Token buckets for frames relayed on behalf of a neighbour (never for own frames/ACKs)."""

from __future__ import annotations


class TokenBucket:
    """Classic token bucket: ``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, *, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = now

    def take(self, *, now: float, cost: float = 1.0) -> bool:
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._stamp = now
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    @property
    def tokens(self) -> float:
        return self._tokens


def battery_scale(battery: int | None, charging: bool) -> float:
    """How much of its relay budget a node spends at this battery level.

    REFERENCE: no relaying below 15 %, soft floor 30 %, scaled in between. We keep a
    trickle (10 %) below 15 % so that a node that is the only way through still relays;
    its path cost makes others preferred.
    """
    if charging or battery is None or battery >= 30:
        return 1.0
    if battery < 15:
        return 0.1
    return 0.25 + 0.75 * (battery - 15) / 15
