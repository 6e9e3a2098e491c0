"""The app-facing message half of ``NodeApi``: app ids, send, get, history, subscribe.

``meshd.node.Node`` inherits these methods from ``AppMessages``; the state they use (the
store, the core, the send window, the subscriber set, the app-owner cache) is the
node's, set up in ``Node.__init__`` and declared here for the type checker only.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any

from meshd.address import NodeAddress
from meshd.commit_hold import CommitHold
from meshd.envelope import Envelope, validate_app_id
from meshd.errors import InvalidArgument, MeshdError, NotFound, PermissionDenied, Unavailable
from meshd.node_api import AppEvent, Caller, MessageRecord
from meshd.router.core import CoreConfig, MeshCore
from meshd.router.e2e_bodies import MAX_PAYLOAD_LEN
from meshd.sendstream import pipelined
from meshd.sendwindow import SendWindow
from meshd.store import Store

MAX_LIFETIME_S = 30 * 24 * 3600.0
MAX_HISTORY_LIMIT = 1000
_SUBSCRIBE_BATCH = 256
_APP_OWNER_CACHE = 4096
# Room for the MLS framing and a Welcome in the first messages of a session (measured:
# Welcome 912 B, ciphertext = plaintext + ~170 B) below the DATA payload limit.
MAX_CONTENT_LEN = MAX_PAYLOAD_LEN - 4096
_DEFAULT_LIFETIME_S = CoreConfig().message_lifetime


class AppMessages:
    """Mixin for ``Node``: the ``NodeApi`` methods an app calls about its messages."""

    # Set by Node.__init__ (and Node.start for the core).
    store: Store
    log: Any
    _debug: bool
    _core_config: CoreConfig | None
    _window: SendWindow
    _visible_cursor: int
    _app_owners: dict[str, int | None]
    _subscribers: set[asyncio.Event]
    _running: bool
    _closed: bool
    _commit_hold: CommitHold

    if TYPE_CHECKING:

        @property
        def core(self) -> MeshCore: ...

        @property
        def address(self) -> NodeAddress: ...

        def _now(self) -> float: ...

        def _schedule_pump(self) -> None: ...

        async def _durable(self) -> None: ...

        def _sessions_seal(
            self, dst: NodeAddress, envelope: Envelope, message_id: bytes, *, expires_at: float
        ) -> bytes | None: ...

        def _sessions_unseal(self, message_id: bytes) -> None: ...

    def _authorize(self, caller: Caller) -> str:
        """The caller's app id, claimed for its uid on first use."""
        app_id = validate_app_id(caller.app_id)
        if app_id in self._app_owners:
            owner = self._app_owners[app_id]
        else:
            # Owners never change once claimed: cache (was one SELECT per call, also for
            # an admin's calls to an unclaimed app id). Bounded: app ids come from callers.
            if len(self._app_owners) >= _APP_OWNER_CACHE:
                self._app_owners.clear()
            owner = self._app_owners[app_id] = self.store.app_owner(app_id)
        if owner is None:
            if caller.is_admin:  # an admin looking at an app must not take it over
                return app_id
            self.store.claim_app(app_id, caller.uid, time.time())
            self._schedule_pump()
            owner = self._app_owners[app_id] = caller.uid
        if owner != caller.uid and not caller.is_admin:
            raise PermissionDenied(
                f"app id {app_id!r} belongs to uid {owner}, not {caller.uid}", field="app_id"
            )
        return app_id

    async def send_message(
        self, caller: Caller, dst: NodeAddress, payload: bytes, *, lifetime_s: float | None
    ) -> MessageRecord:
        if not self._running:
            raise Unavailable("the node is shutting down")
        app_id = self._authorize(caller)
        if dst.is_broadcast:
            raise InvalidArgument("cannot send to the broadcast address", field="dst")
        if dst == self.address:
            raise InvalidArgument("cannot send to this node's own address", field="dst")
        if lifetime_s is not None and not 0 < lifetime_s <= MAX_LIFETIME_S:
            raise InvalidArgument(
                f"lifetime must be in (0, {MAX_LIFETIME_S:.0f}] seconds", field="lifetime"
            )
        if self._window.full(dst):  # many of ours to dst unacknowledged on a link: wait
            await self._window.room(dst)
            if not self._running:
                raise Unavailable("the node is shutting down")
        envelope = Envelope(app_id, bytes(payload))
        if len(payload) > MAX_CONTENT_LEN:
            raise InvalidArgument(f"payload is over {MAX_CONTENT_LEN} bytes", field="payload")
        message_id = os.urandom(8)
        created = time.time()
        lifetime = lifetime_s if lifetime_s is not None else self._default_lifetime()
        # Sealed for dst's 1:1 MLS session (set up from its key package when there is
        # none); None: it waits, stored, for the key package (meshd/e2e/sessions.py).
        sealed = self._sessions_seal(dst, envelope, message_id, expires_at=created + lifetime)
        if sealed is not None:
            # core.send before the history row: if it refuses (full outbox, too large)
            # nothing is stored. Its frames only leave in the pump, after the commit below.
            try:
                self.core.send(dst, sealed, now=self._now(), lifetime=lifetime_s,
                               message_id=message_id)  # fmt: skip
            except MeshdError:
                self._sessions_unseal(message_id)
                raise
        record = self.store.add_outgoing(
            message_id=message_id,
            app_id=app_id,
            dst=dst,
            content=bytes(payload),
            created_at=created,
            expires_at=created + lifetime,
        )
        self._commit_hold.send_waiting(self._now())  # concurrent callers share a commit
        try:
            await self._durable()
        finally:
            self._commit_hold.send_done()
        if self._debug:
            self.log.debug(
                "message_queued", message_id=message_id.hex(), peer=dst.short, app=app_id
            )
        return record

    def send_messages(
        self,
        caller: Caller,
        items: AsyncIterable[tuple[NodeAddress, bytes, float | None] | MeshdError],
    ) -> AsyncIterator[MessageRecord | MeshdError]:
        """``send_message`` per (dst, payload, lifetime_s) item, many in flight (the
        SendMessages stream); results in item order, a refused item's error in its place.
        Many sends share each group commit and its fsync; each result, like
        ``send_message``'s return, comes once that message is durable."""

        def one(item: tuple[NodeAddress, bytes, float | None]) -> Awaitable[MessageRecord]:
            dst, payload, lifetime_s = item
            return self.send_message(caller, dst, payload, lifetime_s=lifetime_s)

        async def room(item: tuple[NodeAddress, bytes, float | None]) -> None:
            # The stream waits for the destination's send window itself, so one waiter
            # stands in line instead of every message in flight (each freed slot woke
            # them all: 9 % of the sending daemon's Python time with 64 waiting).
            if self._window.full(item[0]):
                await self._window.room(item[0])

        return pipelined(items, one, admit=room)

    def _default_lifetime(self) -> float:
        cfg = self._core_config  # not CoreConfig() per message: 1 % of the sender's CPU
        return cfg.message_lifetime if cfg is not None else _DEFAULT_LIFETIME_S

    def get_message(self, caller: Caller, message_id: bytes) -> MessageRecord:
        app_id = self._authorize(caller)
        record = self.store.get_message(app_id, message_id)
        if record is None:  # another app's message is "not found" too: no leak
            raise NotFound(f"no message {message_id.hex()}", field="message_id")
        return record

    def history(
        self,
        caller: Caller,
        *,
        peer: NodeAddress | None,
        limit: int,
        before_cursor: int | None,
    ) -> list[MessageRecord]:
        app_id = self._authorize(caller)
        if not 1 <= limit <= MAX_HISTORY_LIMIT:
            raise InvalidArgument(f"limit must be 1..{MAX_HISTORY_LIMIT}", field="limit")
        if before_cursor is not None and before_cursor < 0:
            raise InvalidArgument("before_cursor must be >= 0", field="before_cursor")
        return self.store.history(app_id, peer=peer, limit=limit, before_cursor=before_cursor)

    async def subscribe(
        self, caller: Caller, *, after_cursor: int | None
    ) -> AsyncIterator[AppEvent]:
        """Stored events after ``after_cursor`` (every retained one when None), then live
        ones; only the caller's app's messages plus node-wide neighbour/path events.
        Reads from the store at the subscriber's pace: a slow app costs no memory."""
        app_id = self._authorize(caller)
        if after_cursor is not None and after_cursor < 0:
            raise InvalidArgument("after_cursor must be >= 0", field="after_cursor")
        if after_cursor is not None and after_cursor > self._visible_cursor:
            # No app can have seen it here: the state directory was reset or replaced.
            raise InvalidArgument(
                f"after_cursor {after_cursor} is ahead of this node's event log (last "
                f"{self._visible_cursor}): was its state reset? Subscribe without a cursor",
                field="after_cursor",
            )
        cursor = after_cursor or 0
        wake = asyncio.Event()
        self._subscribers.add(wake)
        try:
            while not self._closed:
                batch = self.store.events_after(
                    app_id, cursor, limit=_SUBSCRIBE_BATCH, upto=self._visible_cursor
                )
                if not batch:
                    wake.clear()
                    await wake.wait()
                    continue
                for event in batch:
                    cursor = event.cursor
                    yield event
                    if self._closed:
                        return
        finally:
            self._subscribers.discard(wake)
