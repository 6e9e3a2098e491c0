"""The node: the one place that wires transports, the mesh core, the store and the API.

It is the asyncio adapter around the sans-IO ``MeshCore``: transports report link events
and frames (``LinkEvents``), the node feeds the core, then in one *pump* per event-loop
pass it drains the core's events into SQLite, commits once (group commit), wakes
subscribers, writes the core's frames to links and re-arms one timer at
``next_deadline()``.

Durability: when a pump stored something that must survive power loss (a message an app
handed in, a message received from a peer), its frames (e.g. the end-to-end ACK) and the
app's reply wait for an fsync of the WAL in a worker thread (``meshd.store.syncgate``).
So an ACK never leaves before the message it acknowledges is on disk, and the loop never
blocks on the disk.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from meshd import __version__
from meshd.address import NodeAddress
from meshd.commit_hold import CommitHold
from meshd.crypto.identity import Identity
from meshd.crypto.mls.mlsrs import MlsRsEngine
from meshd.e2e.requests import AcceptFrom
from meshd.errors import (
    MeshdError,
    StoreError,
    Unavailable,
)
from meshd.identity_service import IdentityService
from meshd.node_api import (
    Caller,
    ContactInfo,
    IdentityInfo,
    NodeStatus,
)
from meshd.node_events import CoreEventSink
from meshd.node_groups import GroupMessages
from meshd.node_messages import MAX_HISTORY_LIMIT as MAX_HISTORY_LIMIT
from meshd.node_messages import MAX_LIFETIME_S as MAX_LIFETIME_S
from meshd.node_messages import AppMessages
from meshd.node_sessions import SessionMessages
from meshd.router.core import CoreConfig, MeshCore
from meshd.router.events import (
    LinkId,
)
from meshd.router.types import NeighbourInfo, OutboxEntry, RouteInfo
from meshd.sendwindow import SendWindow
from meshd.store import Store
from meshd.store.router_state import RouterState
from meshd.store.statedir import (
    DATABASE_FILE,
    StateLock,
    ensure_state_dir,
    load_or_create_identity_key,
)
from meshd.store.syncgate import SyncGate
from meshd.transports.base import Link, Transport, TransportStatus

_MAINTENANCE_INTERVAL_S = 30.0
_MAINTENANCE_BACKLOG_S = 0.5  # again soon while a prune hit its per-call limit
TransportFactory = Callable[[Identity], Sequence[Transport]]


class _TransportEvents:
    """The ``LinkEvents`` a transport gets: the node, plus which transport is calling."""

    def __init__(self, node: Node, transport: Transport) -> None:
        self._node = node
        self._transport = transport

    def link_up(self, link: Link) -> LinkId:
        return self._node._link_up(self._transport, link)

    def frame_received(self, link_id: LinkId, frame: bytes) -> None:
        self._node._frame_received(link_id, frame)

    def link_down(self, link_id: LinkId) -> None:
        self._node._link_down(link_id)


class Node(CoreEventSink, AppMessages, SessionMessages, GroupMessages):
    """One mesh node. Several may run in one process (tests): no shared state."""

    def __init__(
        self,
        identity: Identity,
        store: Store,
        transports: Sequence[Transport] = (),
        *,
        state_dir: Path,
        core_config: CoreConfig | None = None,
        battery: int | None = None,
        logger: Any = None,
        rng: random.Random | None = None,
        lock: StateLock | None = None,
        keystore_key: bytes | None = None,
        accept_from: str | None = None,
    ) -> None:
        self.identity = identity
        # At-rest key material for the MLS state (meshd/node_sessions.py derives its key).
        self._keystore_key = keystore_key
        if accept_from is not None:  # who may open a 1:1 session (meshd/e2e/requests.py)
            self.accept_from_default = AcceptFrom(accept_from)
        # Derived once: Identity.address hashes the public key on every call (2 % of the
        # sending daemon's CPU when send_message compared against it).
        self._address = identity.address
        self.store = store
        self.state_dir = state_dir
        self._transports = list(transports)
        self._core_config = core_config
        self._battery = battery
        self._rng = rng or random.Random()
        self._lock = lock
        self.log = (logger or structlog.get_logger("meshd.node")).bind(
            node=identity.address.short
        )
        # Debug lines are built only when they will be printed (NodeAddress.short costs
        # a base32 encode; measured 60 us per message in the throughput profile).
        is_enabled = getattr(self.log, "is_enabled_for", None)
        self._debug = bool(is_enabled(logging.DEBUG)) if callable(is_enabled) else True
        self._core: MeshCore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._links: dict[LinkId, tuple[Link, Transport]] = {}
        self._next_link_id = 1
        self._pump_handle: asyncio.Handle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline: float | None = None
        self._maintenance: asyncio.TimerHandle | None = None
        self._commit_waiters: list[asyncio.Future[None]] = []
        self._pumping = False  # inside _pump (MLS writes need no extra pass)
        self._commit_hold = CommitHold()  # concurrent unary senders (meshd/commit_hold.py)
        self._hold: asyncio.TimerHandle | None = None
        self._gate: SyncGate | None = None  # frames and replies waiting for an fsync
        self._subscribers: set[asyncio.Event] = set()
        self._window = SendWindow(self._now)  # backpressure on apps (meshd.sendwindow)
        self._visible_cursor = 0  # last committed event cursor: what subscribers may see
        # app id -> owner uid, or None while unclaimed. Only this node (it holds the state
        # dir's lock) writes the apps table, so the cache cannot go stale.
        self._app_owners: dict[str, int | None] = {}
        self._started_at = time.time()
        self._running = False
        self._closed = False
        # TOFU pins and contacts (meshd/identity_service.py; ContactsApi delegates there).
        self.trust = IdentityService(identity, store, commit=self._durable, log=self.log)
        self._router_state = RouterState(store)  # custody frames (meshd/store/router_state.py)

    @classmethod
    def open(
        cls,
        state_dir: Path,
        transports: TransportFactory | None = None,
        **kwargs: Any,
    ) -> Node:
        """Create/lock the state dir, load or create the identity, open the store."""
        ensure_state_dir(state_dir)
        lock = StateLock(state_dir)
        lock.acquire()
        try:
            identity, created, keystore_key = load_or_create_identity_key(state_dir)
            store = Store.open(state_dir / DATABASE_FILE)
        except BaseException:
            lock.release()
            raise
        node = cls(
            identity,
            store,
            transports(identity) if transports else (),
            state_dir=state_dir,
            lock=lock,
            keystore_key=keystore_key,
            **kwargs,
        )
        if created:
            node.log.info("identity_created", address=identity.address.text)
        return node

    # --- lifecycle ----------------------------------------------------------------
    @property
    def core(self) -> MeshCore:
        if self._core is None:
            raise Unavailable("the node is not started")
        return self._core

    async def start(self) -> None:
        """Restore the outbox into a fresh core, then start every transport."""
        self._loop = asyncio.get_running_loop()
        self._gate = SyncGate(
            sync=lambda: self.store.sync_wal(),  # late-bound (tests replace it)
            send=self._send_frames,
            log=self.log,
            thread_name=f"meshd-fsync-{self.address.short}",
            on_synced=self._schedule_pump,
        )
        now = self._now()
        self._core = MeshCore(self.identity, now=now, rng=self._rng, config=self._core_config)
        self._restore_outbox(now)
        restored, dropped, bad = self._router_state.restore_custody(
            self._core, now=now, wall=time.time()
        )
        for line in bad:
            self.log.error("custody_row_unreadable", detail=line)
        if restored or dropped:
            self.log.info("custody_restored", frames=restored, dropped=dropped)
        self._restore_paths(now)
        self._sessions_start(now)
        if isinstance(self._mls, MlsRsEngine):
            # Application-message ratchets are persisted by the pump's flush (see _pump).
            self._mls.write_behind = True
        self._groups_start(now)
        if self._battery is not None:
            self._core.set_battery(self._battery, charging=False, now=now)
        pruned = self.store.prune_events(now=time.time())
        self.store.commit()
        self._visible_cursor = self.store.last_cursor()
        self._running = True
        self._started_at = time.time()
        for transport in self._transports:
            try:
                await transport.start(_TransportEvents(self, transport))
            except Exception as exc:  # one broken transport must not stop the node
                self.log.error("transport_start_failed", transport=transport.name, error=str(exc))
        self._maintenance = self._loop.call_later(_MAINTENANCE_INTERVAL_S, self._maintain)
        self._schedule_pump()
        if not self.store.checked_at_open:  # too big to check before READY: check now
            check = self._loop.run_in_executor(None, self.store.check_integrity)
            check.add_done_callback(self._integrity_checked)
        self.log.info(
            "node_started",
            address=self.address.text,
            outbox=self.store.outbox_count(),
            events_pruned=pruned,
        )

    async def stop(self) -> None:
        """Stop transports (links go down), flush the core's last events, close the store."""
        if self._closed:
            return
        self._running = False
        self._window.release_all()
        for transport in self._transports:
            try:
                await transport.stop()
            except Exception as exc:
                self.log.error("transport_stop_failed", transport=transport.name, error=str(exc))
        for handle in (self._pump_handle, self._timer, self._maintenance, self._hold):
            if handle is not None:
                handle.cancel()
        if self._gate is not None:
            await self._gate.drain()  # from here the gate holds everything for the close
        self._closed = True
        if self._core is not None:
            self._pump()
            self._snapshot_attempts()
        self._wake_subscribers()
        self._groups_stop()
        self._sessions_stop()
        try:
            self.store.close()  # commits and fsyncs
        except StoreError as exc:
            if self._gate is not None:
                self._gate.close(exc)
            raise
        else:
            if self._gate is not None:
                self._gate.close(None)
        finally:
            if self._lock is not None:
                self._lock.release()
        self.log.info("node_stopped")

    def _restore_outbox(self, now: float) -> None:
        rows, bad = self.store.outbox()
        for line in bad:  # left in the database for the operator; never deleted
            self.log.error("outbox_row_unreadable", detail=line)
        offset = now - time.time()  # unix -> this loop's monotonic clock
        entries = [
            OutboxEntry(
                message_id=r.message_id,
                dst=r.dst,
                payload=r.payload,
                created_at=r.created_at + offset,
                expires_at=r.expires_at + offset,
                state=r.state,
                attempts=r.attempts,
            )
            for r in rows
        ]
        # Payloads as sealed by the session layer (the store keeps the app's plaintext).
        # (messages not sealed yet wait in the session layer for the peer's key package)
        sealed = self._sessions_restore(entries, offset)
        if sealed:
            self.core.restore(sealed, now=now)
        if entries:
            self.log.info("outbox_restored", messages=len(entries), sealed=len(sealed))

    def _restore_paths(self, now: float) -> None:
        """Paths from before the restart, as unconfirmed hints (MeshCore.restore_paths);
        those older than a route's lifetime are surely stale and skipped."""
        wall = time.time()
        lifetime = self.core.router.config.route_lifetime
        try:
            self._router_state.prune_paths(before=wall - lifetime)
            paths = self.store.paths()
        except StoreError as exc:  # only a hint: start without them
            self.log.error("paths_unreadable", error=str(exc))
            return
        hints = [(p.dst, p.next_hop, p.hops, p.cost) for p in paths]
        if hints:
            self.core.restore_paths(hints, now=now)

    def _integrity_checked(self, fut: asyncio.Future[None]) -> None:
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            self.log.error("store_integrity_failed", error=str(exc))
        else:
            self.log.info("store_integrity_ok", path=str(self.store.path))

    def set_battery(self, level: int, *, charging: bool) -> None:
        """Tell the router the battery level (it relays less when low)."""
        self.core.set_battery(level, charging=charging, now=self._now())
        self._schedule_pump()

    def _maintain(self) -> None:
        """Retention in short steps (each a few ms on the loop), attempts snapshot."""
        assert self._loop is not None
        try:
            self._snapshot_attempts()
            pruned = self.store.prune_events(now=time.time())
            pruned_history = self.store.prune_history(now=time.time())
        except StoreError as exc:
            self.log.error("store_maintenance_failed", error=str(exc))
            pruned = pruned_history = 0
        if pruned or pruned_history:
            self.log.debug("store_pruned", events=pruned, messages=pruned_history)
        backlog = pruned >= 5000 or pruned_history >= 5000
        delay = _MAINTENANCE_BACKLOG_S if backlog else _MAINTENANCE_INTERVAL_S
        self._maintenance = self._loop.call_later(delay, self._maintain)
        self._schedule_pump()

    def _snapshot_attempts(self) -> None:
        self.store.set_attempts([(e.message_id, e.attempts) for e in self.core.outbox()])

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # --- LinkEvents (via _TransportEvents) ----------------------------------------
    def _link_up(self, transport: Transport, link: Link) -> LinkId:
        link_id = self._next_link_id
        self._next_link_id += 1
        self._links[link_id] = (link, transport)
        peer = link.peer
        self.core.link_up(link_id, peer, link.info, now=self._now())
        try:
            self.store.upsert_peer(peer, now=time.time(), endpoint=link.description)
        except StoreError as exc:
            self.log.error("store_write_failed", what="peer", error=str(exc))
        try:
            self.trust.observe(peer.address, peer, wall=time.time())
        except StoreError as exc:
            self.log.error("store_write_failed", what="contact", error=str(exc))
        self.log.info(
            "link_up", link=link_id, peer=peer.address.short, endpoint=link.description
        )
        self._schedule_pump()
        return link_id

    def _frame_received(self, link_id: LinkId, frame: bytes) -> None:
        if link_id not in self._links or self._core is None:
            return
        try:
            self._core.receive(link_id, frame, now=self._now())
        except Exception:  # the core promises not to raise; a bug must not kill the link
            self.log.exception("core_receive_failed", link=link_id, size=len(frame))
        self._schedule_pump()

    def _link_down(self, link_id: LinkId) -> None:
        entry = self._links.pop(link_id, None)
        if entry is None or self._core is None:
            return
        self._core.link_down(link_id, now=self._now())
        self.log.info("link_down", link=link_id, peer=entry[0].peer.address.short)
        self._schedule_pump()

    # --- the pump -----------------------------------------------------------------
    def _schedule_pump(self) -> None:
        if self._pump_handle is None and self._loop is not None and not self._closed:
            self._pump_handle = self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Drain events -> store, commit once, wake subscribers, send frames, re-arm."""
        self._pumping = True
        try:
            self._pump_pass()
        finally:
            self._pumping = False

    def _mls_wrote(self) -> None:
        """The MLS state store wrote into the open transaction: make sure a pass commits
        it (a pass in progress does already)."""
        if not self._pumping:
            self._schedule_pump()

    def _pump_pass(self) -> None:
        self._pump_handle = None
        core = self.core
        wall = time.time()
        assert self._gate is not None
        defer = not self._closed and (self._gate.syncing or self._holding())
        if not defer:
            queued = len(self._e2e_queue) if self._e2e_queue is not None else 0
            if queued:
                self._commit_hold.committing()
            # This pass commits: seal the 1:1 sends queued since the last one, one MLS
            # message per peer (meshd/e2e/coalesce.py); their events are drained below.
            self._sessions_coalesced()
        while (event := core.next_event()) is not None:
            try:
                self._handle_event(event, wall)
            except StoreError as exc:
                self.log.error("store_write_failed", event=type(event).__name__, error=str(exc))
        if defer:
            # Group commit: while an fsync runs, what this pass would release (frames,
            # replies) waits behind it anyway, so keep the transaction open and commit
            # once when it returns (the gate calls _schedule_pump). Under load this turned
            # ~1 commit per message into ~1 per fsync. The frames stay in the core's
            # queue, the waiters in _commit_waiters: nothing leaves before its commit.
            self._arm_timer()
            return
        waiters, self._commit_waiters = self._commit_waiters, []
        try:
            # MLS write-behind: the ratchet state behind every ciphertext sealed and every
            # message opened since the last pass is written into this transaction (the
            # MLS tables are in this database: meshd/crypto/mls/storage.py), so ratchets
            # and messages commit together, and frames leave only after the commit. (An
            # engine with a database of its own writes the groups that only opened
            # messages after the commit, below.) A failed flush holds the frames like a
            # failed commit.
            if self._mls is not None:
                self._mls.flush(opened_only=self._mls.commits_with_store)
            self.store.commit()
        except StoreError as exc:
            # Nothing reached disk: hold the frames back (an ACK must not outrun its
            # message); hop-by-hop retransmission resends them.
            self.log.error("store_commit_failed", error=str(exc))
            core.frames_to_send()
            for w in waiters:
                if not w.done():
                    w.set_exception(exc)
            self._arm_timer()
            return
        if self._mls is not None:
            # An engine with its own database: groups that only opened messages are
            # written after the messages are committed (a crash in between leaves a
            # duplicate, not a loss). Failing here loses nothing either: they stay dirty.
            try:
                self._mls.flush()
            except MeshdError as exc:
                self.log.error("mls_flush_failed", error=str(exc))
        committed = self.store.last_cursor()
        if committed > self._visible_cursor:  # new events are on disk: show them
            self._visible_cursor = committed
            self._wake_subscribers()
        durable, self.store.durable_pending = self.store.durable_pending, False
        self._gate.submit(core.frames_to_send(), waiters, durable=durable)
        self._arm_timer()

    def _holding(self) -> bool:
        """Hold this pass's commit for more concurrent sends (meshd/commit_hold.py)?"""
        queue = self._e2e_queue
        assert self._loop is not None
        until = self._commit_hold.deadline(len(queue) if queue is not None else 0,
                                           self._loop.time())  # fmt: skip
        if until is None:
            return False
        if self._hold is None or self._hold.when() != until:
            if self._hold is not None:
                self._hold.cancel()
            self._hold = self._loop.call_at(until, self._hold_over)
        return True

    def _hold_over(self) -> None:
        self._hold = None
        self._schedule_pump()

    def _send_frames(self, frames: list[tuple[LinkId, bytes]]) -> None:
        for link_id, data in frames:
            entry = self._links.get(link_id)
            if entry is not None:
                entry[0].send(data)

    def _arm_timer(self) -> None:
        deadline = self.core.next_deadline()
        if deadline == self._timer_deadline and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_deadline = deadline
        if deadline is not None and self._loop is not None and not self._closed:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_deadline = None
        try:
            self.core.handle_timer(now=self._now())
        except Exception:  # keep the node alive; the next event re-arms the timer
            self.log.exception("core_timer_failed")
        self._pump()

    async def _durable(self) -> None:
        """Wait until every write so far is committed (the next pump)."""
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._commit_waiters.append(fut)
        self._schedule_pump()
        await fut

    def _wake_subscribers(self) -> None:
        for ev in self._subscribers:
            ev.set()

    # --- ContactsApi (meshd/identity_service.py) ------------------------------------
    def identity_info(self) -> IdentityInfo:
        return self.trust.identity_info()

    def list_contacts(self) -> list[ContactInfo]:
        return self.trust.list_contacts()

    def get_contact(self, address: NodeAddress) -> ContactInfo:
        return self.trust.get_contact(address)

    async def set_contact_name(
        self, caller: Caller, address: NodeAddress, name: str
    ) -> ContactInfo:
        return await self.trust.set_contact_name(caller, address, name)

    async def trust_key_change(self, caller: Caller, address: NodeAddress) -> ContactInfo:
        return await self.trust.trust_key_change(caller, address)

    async def verify_contact(
        self, caller: Caller, address: NodeAddress, safety_number: str
    ) -> ContactInfo:
        return await self.trust.verify_contact(caller, address, safety_number)

    # --- NodeApi (the message methods are AppMessages', meshd/node_messages.py) ------
    @property
    def address(self) -> NodeAddress:
        return self._address

    def status(self) -> NodeStatus:
        return NodeStatus(
            address=self.address,
            version=__version__,
            started_at=self._started_at,
            uptime_s=max(0.0, time.time() - self._started_at),
            neighbours=len(self.core.neighbours()),
            routes=len(self.core.routes()),
            outbox=self.store.outbox_count(),
            state_dir=str(self.state_dir),
        )

    def neighbours(self) -> list[NeighbourInfo]:
        """The core's neighbours with ``up_since`` as unix time (the core's is monotonic)."""
        offset = self._wall_offset()
        return [replace(n, up_since=n.up_since + offset) for n in self.core.neighbours()]

    def routes(self) -> list[RouteInfo]:
        """The core's routes with ``expires_at`` as unix time."""
        offset = self._wall_offset()
        return [replace(r, expires_at=r.expires_at + offset) for r in self.core.routes()]

    def _wall_offset(self) -> float:
        """Add to a core (loop monotonic) time to get unix time."""
        return time.time() - self._now()

    def transports(self) -> list[TransportStatus]:
        return [t.status() for t in self._transports]
