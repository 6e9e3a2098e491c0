"""Whether the pump holds its commit for concurrent unary senders (sans-IO, ``now`` in).

Concurrent unary callers come back one by one after a commit releases them, and a pass
that committed as soon as the first one was back sealed it alone: 16 callers made
carriers of 3.2 messages on average (627 of 900 sealed alone), so ~1 MLS seal, commit and
fsync per 3 messages. So a pass holds its commit (as while an fsync runs) while fewer
sends are queued than were waiting at once during the previous commit's cycle (the
callers it released are on their way back): at most ``hold_s`` after it first held, and
``gap_s`` after the latest send arrived (a caller that is not coming back costs one gap,
not the whole hold).

Measured, two daemons, 16 callers, 3000 x 1 KiB: estimating from the previous pass's
queue (2 ms hold) settled into two alternating groups of ~8 (commits of 4.5-5.9 on
average, 909-1250 msg/s); the cycle's peak merges them into one of 16, 1300-1620 msg/s,
sender CPU 0.77-0.99 -> 0.46-0.68 ms/msg. A back-to-back caller never waits: it is never
concurrent with another, so the peak stays 1.
"""

from __future__ import annotations

HOLD_S = 0.006
GAP_S = 0.002


class CommitHold:
    """Counts the sends waiting for a commit; says how long a pass may hold its commit."""

    def __init__(self, *, hold_s: float = HOLD_S, gap_s: float = GAP_S) -> None:
        self.hold_s = hold_s
        self.gap_s = gap_s
        self.expect = 0  # sends a pass holds for: the previous cycle's peak
        self.waiting = 0  # sends waiting for their commit now
        self.peak = 0  # most of them at once since the last commit
        self.last_send_at = 0.0
        self.since: float | None = None  # when the pass being held first held

    def send_waiting(self, now: float) -> None:
        """A send is stored and waits for the commit that makes it durable."""
        self.waiting += 1
        self.last_send_at = now
        self.peak = max(self.peak, self.waiting)

    def send_done(self) -> None:
        self.waiting -= 1

    def committing(self) -> None:
        """A pass commits queued sends: their cycle's peak is what the next pass expects
        back (a burst's end, or a lone caller, lowers it)."""
        self.expect = self.peak
        self.peak = self.waiting

    def deadline(self, queued: int, now: float) -> float | None:
        """Hold a pass with ``queued`` sends until this time (it is asked again on every
        pass and at that time), or None: commit now."""
        if not queued or queued >= self.expect:
            self.since = None
            return None
        if self.since is None:
            self.since = now
        until = min(self.since + self.hold_s, self.last_send_at + self.gap_s)
        if now >= until:
            self.since = None
            return None
        return until
