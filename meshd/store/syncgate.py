"""Hold outgoing frames and app replies until an fsync covers the writes made before them.

The node commits SQLite once per event-loop pass with ``synchronous=NORMAL`` (kill -9
safe). When a pass stored something that must also survive power loss (a message an app
handed in, a message received from a peer), what the pass would tell the world (the ACK
frame, the app's reply) waits here for ``sync`` (an fsync of the WAL) run in one worker
thread. Passes arriving while an fsync runs queue behind it, in order, and one later fsync
covers them all (group commit), so the event loop never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from typing import Any

from meshd.errors import StoreError, Unavailable
from meshd.router.events import LinkId

Frames = list[tuple[LinkId, bytes]]


class SyncGate:
    def __init__(
        self,
        *,
        sync: Callable[[], None],
        send: Callable[[Frames], None],
        log: Any,
        thread_name: str = "meshd-fsync",
        on_synced: Callable[[], None] | None = None,
    ) -> None:
        self._sync = sync
        self._send = send
        self._log = log
        self._on_synced = on_synced  # told after each fsync (the node commits what waited)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=thread_name
        )
        self._frames: Frames = []
        self._waiters: list[asyncio.Future[None]] = []
        self._durable = False  # something held needs an fsync (not only order)
        self._inflight: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def busy(self) -> bool:
        return self._inflight is not None or bool(self._frames or self._waiters)

    @property
    def syncing(self) -> bool:
        """An fsync is running: whatever is submitted now waits for the next one anyway."""
        return self._inflight is not None

    def submit(self, frames: Frames, waiters: list[asyncio.Future[None]], *, durable: bool) -> None:
        """Send/resolve now when nothing needs the disk, else hold behind the next fsync."""
        if not durable and not self.busy:
            self._send(frames)
            _resolve(waiters, None)
            return
        self._frames.extend(frames)
        self._waiters.extend(waiters)
        self._durable |= durable
        self._start()

    def _start(self) -> None:
        if self._inflight is not None or self._closed:
            return
        if not self._durable:  # held only to keep the order: release without an fsync
            self._release(None)
            return
        frames, waiters = self._frames, self._waiters
        self._frames, self._waiters, self._durable = [], [], False
        fut = asyncio.get_running_loop().run_in_executor(self._executor, self._sync)
        self._inflight = fut

        def done(f: asyncio.Future[None]) -> None:
            self._inflight = None
            exc = f.exception() if not f.cancelled() else Unavailable("fsync cancelled")
            if exc is not None:
                # Not on disk: keep the frames back (hop-by-hop and end-to-end retries
                # resend them) and fail the replies.
                self._log.error("store_sync_failed", error=str(exc))
                _resolve(waiters, exc)
            else:
                self._send(frames)
                _resolve(waiters, None)
            if self._frames or self._waiters:
                self._start()
            if self._on_synced is not None and not self._closed:
                self._on_synced()

        fut.add_done_callback(done)

    async def drain(self) -> None:
        """Wait for the fsync in flight, if any; later submits stay held (see ``close``)."""
        self._closed = True
        if self._inflight is not None:
            with contextlib.suppress(StoreError):
                await self._inflight
        self._executor.shutdown(wait=True)

    def close(self, exc: BaseException | None) -> None:
        """After the store's own final fsync: release (or fail) what is still held."""
        self._closed = True
        self._release(exc)

    def _release(self, exc: BaseException | None) -> None:
        frames, waiters = self._frames, self._waiters
        self._frames, self._waiters, self._durable = [], [], False
        if exc is None:
            self._send(frames)
        _resolve(waiters, exc)


def _resolve(waiters: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    for w in waiters:
        if w.done():
            continue
        if exc is None:
            w.set_result(None)
        else:
            w.set_exception(exc)
