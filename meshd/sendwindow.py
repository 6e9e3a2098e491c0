"""Admission control for ``Node.send_message``: backpressure instead of congestion collapse.

The mesh core hands every accepted message to a link at once, and a link takes at most
512 unacknowledged frames (``LinkReliability.max_inflight``) before the router gives up on
it and floods. Measured with two daemons at full speed (1 KiB, 16 API callers): the link's
hop-by-hop RTT grew to a p50 of 35-100 ms and a p99 of 0.3-0.7 s (frames queued in the
socket buffers behind a busy receiver), past the 0.3 s RTO floor: 1,000-1,500 link-level
retransmissions and 250-870 flooded copies per 4,000-5,000 messages, i.e. the work of
1.3-1.5 messages per message, and throughput fell further under load.

So an app's send waits, before anything is stored, while ``limit`` of this node's
messages to the same destination are on a link unacknowledged (state SENT: handed to a
link, not yet RELAYED). A message to a destination with no path stays QUEUED and holds no
room; a SENT message older than ``stale_after`` (its link died, or the router rerouted it)
stops holding room, so a dead link costs a sender at most that long once, not forever.
At low load the window is never full: latency is unchanged.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from meshd.address import NodeAddress

DEFAULT_LIMIT = 64
DEFAULT_STALE_AFTER_S = 2.0
_RECHECK_S = 0.25  # waiters look again this often (stale entries expire on a clock)


class SendWindow:
    """Per destination: message id -> when it went SENT (loop time)."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        limit: int = DEFAULT_LIMIT,
        stale_after: float = DEFAULT_STALE_AFTER_S,
    ) -> None:
        self._clock = clock
        self._limit = limit
        self._stale_after = stale_after
        self._on_link: dict[NodeAddress, dict[bytes, float]] = {}
        self._waiters: dict[NodeAddress, deque[asyncio.Future[None]]] = {}

    def sent(self, dst: NodeAddress, message_id: bytes) -> None:
        """The message went SENT (it holds room until it leaves that state)."""
        entries = self._on_link.setdefault(dst, {})
        entries.pop(message_id, None)  # to the end: entries stay in the order of their time
        entries[message_id] = self._clock()

    def left(self, dst: NodeAddress, message_id: bytes) -> None:
        """Any other state: RELAYED, DELIVERED, FAILED, held by a custodian."""
        entries = self._on_link.get(dst)
        if entries is None or entries.pop(message_id, None) is None:
            return
        if not entries:
            del self._on_link[dst]
        if len(entries) < self._limit:
            # One slot freed: wake one waiter, first come first served. Waking all of them
            # (16-64 unary callers) made all but one look again and go back to sleep.
            waiters = self._waiters.get(dst)
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break
            if waiters is not None and not waiters:
                del self._waiters[dst]

    def in_flight(self, dst: NodeAddress) -> int:
        return len(self._on_link.get(dst, ()))

    def full(self, dst: NodeAddress) -> bool:
        entries = self._on_link.get(dst)
        if entries is None or len(entries) < self._limit:
            return False
        oldest_kept = self._clock() - self._stale_after
        # Oldest first (see sent): stop at the first one kept instead of scanning all
        # ``limit`` entries on every check of a full window (node_bench: 64 senders).
        while entries and next(iter(entries.values())) < oldest_kept:
            del entries[next(iter(entries))]
        return len(entries) >= self._limit

    async def room(self, dst: NodeAddress) -> None:
        """Return once ``dst`` has room (at once, nearly always)."""
        while self.full(dst):
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            waiters = self._waiters.setdefault(dst, deque())
            waiters.append(waiter)
            try:
                await asyncio.wait((waiter,), timeout=_RECHECK_S)
            finally:
                if not waiter.done():
                    waiter.cancel()
                    if waiter in waiters:
                        waiters.remove(waiter)
                    if not waiters and self._waiters.get(dst) is waiters:
                        del self._waiters[dst]

    def release_all(self) -> None:
        """Shutting down: wake every waiter (the node refuses their sends itself)."""
        self._on_link.clear()
        waiters, self._waiters = self._waiters, {}
        for group in waiters.values():
            for waiter in group:
                if not waiter.done():
                    waiter.set_result(None)
