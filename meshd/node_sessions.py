"""The node's 1:1 end-to-end half: MLS sessions, key packages, connection requests.

``meshd.node.Node`` inherits this mixin; the node calls the ``_sessions_*`` hooks from its
lifecycle and its pump. Payload kinds 0x10..0x1F (``meshd.e2e.kinds``) land here; the
logic is sans-IO in ``meshd.e2e.sessions`` / ``meshd.e2e.requests``, this module carries
out its actions (core sends, deliveries, events) and keeps the timers.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity
from meshd.crypto.mls.engine import MlsEngine
from meshd.crypto.mls.mlsrs import MlsRsEngine
from meshd.crypto.mls.storage import DB_NAME, MlsStateStore, retire_legacy
from meshd.e2e import session_wire as sw
from meshd.e2e.coalesce import Coalescer, Queued, seal_batch
from meshd.e2e.requests import AcceptFrom, E2eSessions, RequestInfo
from meshd.e2e.session_updates import DEFAULT_UPDATE_INTERVAL_S
from meshd.e2e.sessions import Deliver, Expired, Notice, Opened, SendPayload, SessionInfo
from meshd.envelope import Envelope
from meshd.errors import (
    DeadlineExceeded,
    InvalidArgument,
    MeshdError,
    PermissionDenied,
    StoreError,
    Unavailable,
)
from meshd.node_api import AppEventKind, Caller
from meshd.router.core import CoreConfig
from meshd.router.events import (
    DeliveryState,
    DeliveryStateChanged,
    MessageReceived,
    PeerIdentityLearned,
)
from meshd.router.types import OutboxEntry
from meshd.store import Store
from meshd.store.sessions import PendingRow, SessionRow, SessionTables

if TYPE_CHECKING:
    from meshd.identity_service import IdentityService
    from meshd.router.core import MeshCore
    from meshd.sendwindow import SendWindow

MLS_DIR = "mls"
_TICK_S = 5.0
_UNOPENED = "at the peer's node, not opened: it has not joined the session yet"
_HKDF_INFO = b"meshd mls state at-rest key v1"
_NOTICE_EVENTS = {
    "connection_request": AppEventKind.CONNECTION_REQUEST,
    "connection_accepted": AppEventKind.CONNECTION_ACCEPTED,
    "connection_rejected": AppEventKind.CONNECTION_REJECTED,
    "connection_cancelled": AppEventKind.CONNECTION_CANCELLED,
    "connection_expired": AppEventKind.CONNECTION_EXPIRED,
    "session_established": AppEventKind.SESSION_ESTABLISHED,
    "message_undecryptable": AppEventKind.MESSAGE_UNDECRYPTABLE,
    "awaiting_acceptance": AppEventKind.AWAITING_ACCEPTANCE,
}


def mls_at_rest_key(keystore_key: bytes) -> bytes:
    """The MLS state's AES key: HKDF-SHA256 of the keystore key (RFC 5869), own label."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=_HKDF_INFO).derive(keystore_key)


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    accept_from: str


class SessionMessages:
    """Mixin for ``Node``: 1:1 sessions."""

    # Set by Node.__init__ (and Node.start).
    log: Any
    identity: Identity
    store: Store
    state_dir: Path
    trust: IdentityService
    _keystore_key: bytes | None
    _loop: asyncio.AbstractEventLoop | None
    _running: bool
    _debug: bool

    if TYPE_CHECKING:

        @property
        def core(self) -> MeshCore: ...

        @property
        def address(self) -> NodeAddress: ...

        def _now(self) -> float: ...

        def _schedule_pump(self) -> None: ...

        def _mls_wrote(self) -> None: ...

        async def _durable(self) -> None: ...

        def _authorize(self, caller: Caller) -> str: ...

    _mls: MlsEngine | None = None
    _e2e: E2eSessions | None = None
    _e2e_tables: SessionTables | None = None
    _e2e_timer: asyncio.TimerHandle | None = None
    _e2e_resends: dict[bytes, bytes] | None = None  # re-send carrier id -> app message id
    #: Coalescing (meshd/e2e/coalesce.py): app messages queued for the next pump pass, and
    #: each open coalesced carrier's members after the first (the carrier id's message).
    _e2e_queue: Coalescer | None = None
    _e2e_batches: dict[bytes, list[bytes]] | None = None
    _e2e_direct: set[NodeAddress]  # peers sent a message alone since the last pump pass
    #: Coalesce queued 1:1 sends per peer (False: one MLS message each, the baseline the
    #: benchmark compares with; MESHD_COALESCE=0 in the environment sets it at start).
    coalesce: bool = True
    _window: SendWindow
    accept_from_default: AcceptFrom = AcceptFrom.ANYONE
    #: Seconds between self-updates of each 1:1 session (0: never); set before start().
    session_update_interval: float = DEFAULT_UPDATE_INTERVAL_S

    # --- lifecycle ----------------------------------------------------------------------
    @property
    def mls(self) -> MlsEngine:
        """This node's MLS engine (state in ``state_dir/mls``, sealed under the keystore)."""
        if self._mls is None:
            raise Unavailable("the node is not started")
        return self._mls

    @property
    def e2e(self) -> E2eSessions:
        if self._e2e is None:
            raise Unavailable("the node is not started")
        return self._e2e

    def _tables(self) -> SessionTables:
        if self._e2e_tables is None:
            self._e2e_tables = SessionTables(self.store)
        return self._e2e_tables

    def _sessions_start(self, now: float) -> None:
        """Called by ``Node.start`` once the core exists, before transports start."""
        key = None if self._keystore_key is None else mls_at_rest_key(self._keystore_key)
        # The MLS state lives in the node's database, written in the pump's transaction
        # (meshd/crypto/mls/storage.py); a state directory from before that is imported.
        legacy = self.state_dir / MLS_DIR
        states = MlsStateStore(connection=self.store.connection, at_rest_key=key,
                               legacy_dir=legacy, on_write=self._mls_wrote)  # fmt: skip
        if states.imported:
            self.store.commit()
            self.store.sync_wal()
            self.log.info("mls_state_imported", source=str(legacy / DB_NAME))
        retire_legacy(legacy)
        self._mls = MlsRsEngine(None, self.identity, store=states)
        self._e2e = E2eSessions(
            self._mls,
            self._tables(),
            identity=self.identity,
            pinned=self.trust.book.get,
            default_accept_from=self.accept_from_default,
            update_interval=self.session_update_interval,
        )
        if self._e2e_resends is None:
            self._e2e_resends = {}
        if self._e2e_batches is None:
            self._e2e_batches = {}
        if os.environ.get("MESHD_COALESCE") == "0":
            self.coalesce = False
        self._e2e_queue = Coalescer()
        self._e2e_direct = set()
        self._e2e_publish()
        assert self._loop is not None
        self._e2e_timer = self._loop.call_later(_TICK_S, self._e2e_tick)

    def _sessions_stop(self) -> None:
        """Called by ``Node.stop`` before the store closes."""
        if self._e2e_timer is not None:
            self._e2e_timer.cancel()
            self._e2e_timer = None
        if isinstance(self._mls, MlsRsEngine):
            self._mls.close()
        self._mls = None
        self._e2e = None

    def _e2e_tick(self) -> None:
        assert self._loop is not None
        self._e2e_timer = self._loop.call_later(_TICK_S, self._e2e_tick)
        try:
            self.e2e.tick(now=time.time())
            self._e2e_publish()
            self._e2e_drain(time.time())
        except MeshdError as exc:
            self.log.error("e2e_tick_failed", error=str(exc))
        except Exception:  # a bug must not stop expiry and key package rotation
            self.log.exception("e2e_tick_failed")
        self._schedule_pump()

    def _e2e_publish(self) -> None:
        """Put a fresh key package in the announce when the current one is used or old."""
        ext = self.e2e.publish(now=time.time())
        if ext is not None:
            self.core.set_announce_extensions(ext, now=self._now())
            self.log.debug("key_package_published", size=len(ext))

    # --- hooks from the node ------------------------------------------------------------
    def _sessions_peer_learned(self, event: PeerIdentityLearned, wall: float) -> None:
        """A verified announce (with its extensions) of ``event.address`` arrived."""
        if self._e2e is None or not event.extensions:
            return
        try:
            self._e2e.learn_extensions(event.address, event.extensions, now=wall)
        except StoreError:
            raise
        except Exception:  # a peer's announce must never take the node down
            self.log.exception("e2e_extensions_failed", peer=event.address.short)
        self._e2e_drain(wall)

    def _session_payload(self, event: MessageReceived, wall: float) -> None:
        try:
            self.e2e.receive(event.src, event.payload, hops=event.hops + 1, now=wall)
        except StoreError:
            raise  # the pump logs it; the rest of the pass goes on
        except Exception:  # peer input must never take the node down
            self.log.exception("e2e_receive_failed", peer=event.src.short,
                               kind=event.payload[0], size=len(event.payload))  # fmt: skip
        self._e2e_drain(wall)

    def _sessions_plaintext(self, event: MessageReceived, wall: float) -> None:
        """A 0x01 plaintext envelope: refused (user messages must be end-to-end encrypted)."""
        self.log.warning("plaintext_refused", peer=event.src.short,
                         message_id=event.message_id.hex())  # fmt: skip
        self.store.append_event(None, AppEventKind.PLAINTEXT_REFUSED, wall, peer=event.src,
                                detail="unencrypted message dropped")  # fmt: skip

    def _sessions_delivery(self, event: DeliveryStateChanged) -> DeliveryStateChanged | None:
        """Map a re-send carrier's state to its app message (None: nothing to record);
        a coalesced carrier's state also goes to its other members here."""
        e2e = self._e2e
        if event.state is DeliveryState.DELIVERED and e2e is not None and e2e.unopened(event.dst):
            # The peer's node has it but has not joined the session: a contacts-only node
            # holds it as a connection request. RELAYED for now; DELIVERED once the peer
            # proves it joined (an Opened action), FAILED if it rejects.
            resends = self._e2e_resends
            app_id = resends.pop(event.message_id, None) if resends else None
            if app_id is not None:
                e2e.resend_done(event.message_id)
            batches: dict[bytes, list[bytes]] | None = getattr(self, "_e2e_batches", None)
            riding = batches.get(event.message_id, []) if batches else []
            e2e.defer_delivered(event.dst, [app_id or event.message_id, *riding])
            event = replace(event, message_id=app_id or event.message_id,
                            state=DeliveryState.RELAYED, reason=_UNOPENED)  # fmt: skip
            if app_id is not None:
                return event
        batches = self._e2e_batches
        members = batches.get(event.message_id) if batches else None
        if members is not None:
            assert batches is not None
            wall = time.time()
            for message_id in members:
                if event.state is DeliveryState.SENT:
                    self._window.sent(event.dst, message_id)
                else:
                    self._window.left(event.dst, message_id)
                self.store.set_outgoing_state(message_id, event.state, event.reason, at=wall)
            if event.state.is_final:
                del batches[event.message_id]
            return event  # the carrier's id is its first member's
        resends = self._e2e_resends
        app_id = resends.get(event.message_id) if resends else None
        if app_id is None:
            return event  # the common case: no lookup, no write
        if not event.state.is_final:
            return None  # the app's message already went through these states once
        assert resends is not None
        del resends[event.message_id]
        if self._e2e is not None:
            self._e2e.resend_done(event.message_id)
        return replace(event, message_id=app_id)

    def _sessions_restore(self, entries: list[OutboxEntry], offset: float) -> list[OutboxEntry]:
        """Outbox entries as the core must get them: the sealed payload, never plaintext.
        A message not sealed yet (or stored by a meshd before encryption) waits for a
        session; re-send carriers come back too. ``offset``: unix -> loop time."""
        tables = self._tables()
        resends = self._e2e_resends = {}
        waiting = {p.message_id for p in tables.pending()}
        # Coalesced carriers still in the outbox bring their members along: those are
        # not restored (nor re-sealed) on their own.
        restored = {e.message_id for e in entries}
        self._e2e_batches = {c: m for c, m in tables.batches().items() if c in restored}
        riding = {m for members in self._e2e_batches.values() for m in members}
        out: list[OutboxEntry] = []
        for entry in entries:
            if entry.message_id in riding:
                continue
            row = tables.sealed(entry.message_id)
            if row is not None:
                out.append(replace(entry, payload=row.payload))
            elif entry.message_id not in waiting:
                created, expires = entry.created_at - offset, entry.expires_at - offset
                tables.add_pending(PendingRow(entry.message_id, entry.dst, created, expires, 0))
        for row in tables.open_sealed():
            if row.carrier_id == row.message_id:
                continue
            resends[row.carrier_id] = row.message_id
            out.append(OutboxEntry(row.carrier_id, row.peer, row.payload,
                                   row.created_at + offset, row.expires_at + offset,
                                   DeliveryState.QUEUED, 0))  # fmt: skip
        return out

    def _sessions_seal(
        self, dst: NodeAddress, envelope: Envelope, message_id: bytes, *, expires_at: float
    ) -> bytes | None:
        """Seal an app message for ``dst`` (None: it waits, for the next pump pass when it
        is coalesced, else for a key package, stored)."""
        queue = self._e2e_queue
        s = self.e2e.session(dst) if self.coalesce and queue is not None else None
        # Only in a session the peer is known to have joined: before that the Welcome
        # rides along (size) and a held connection request keeps its own delivery logic.
        if queue is not None and s is not None and s.confirmed:
            direct = self._e2e_direct
            if dst in queue or dst in direct or self._window.in_flight(dst):
                # Sealed with whatever else is queued for dst by _sessions_coalesced, in
                # the pump pass whose commit this send waits for (so nothing is
                # acknowledged to the app before its carrier is stored).
                queue.add(dst, Queued(message_id, envelope, expires_at))
                return None
            # As Nagle (RFC 896): nothing of ours on the way to dst, so this one goes at
            # once, alone; those after it in this pass, or while it is in flight, wait
            # for the pump. So at low load the path is exactly the one without coalescing.
            direct.add(dst)
        payload = self.e2e.seal_or_queue(dst, envelope, message_id, now=time.time(),
                                         expires_at=expires_at)  # fmt: skip
        self._e2e_drain(time.time())
        return payload

    def _sessions_coalesced(self) -> None:
        """Seal and hand to the core what ``_sessions_seal`` queued: one carrier per peer
        and batch (meshd/e2e/coalesce.py). Called by the pump before the events it drains
        and the commit it makes, so the carriers commit with their history rows."""
        queue = self._e2e_queue
        if queue is None:
            return
        self._e2e_direct.clear()
        if not queue:
            return
        e2e = self.e2e
        wall = time.time()
        for dst, items in queue.take():
            s = e2e.session(dst)
            if s is None:  # reset meanwhile: alone, as an unqueued send would be
                for q in items:
                    try:
                        self._e2e_send_one(dst, q, wall)
                    except StoreError as exc:
                        self.log.error("store_write_failed", event="coalesced_send",
                                       error=str(exc))  # fmt: skip
                continue
            try:
                self._e2e_send_batch(s, items, wall)
            except StoreError as exc:  # the pump's commit fails too; logged, not fatal
                self.log.error("store_write_failed", event="coalesced_send", error=str(exc))
        self._e2e_drain(wall)

    def _e2e_send_batch(self, s: SessionRow, items: list[Queued], wall: float) -> None:
        carrier = items[0].message_id
        try:
            payload, expires_at = seal_batch(self.e2e, s, items, now=wall)
            self.core.send(s.peer, payload, now=self._now(), message_id=carrier,
                           lifetime=max(expires_at - wall, 0.001))  # fmt: skip
        except StoreError:
            raise
        except MeshdError as exc:
            tables = self._tables()
            tables.delete_sealed(carrier)
            if len(items) > 1 and isinstance(exc, InvalidArgument):
                # Sealed larger than the core takes: halve (a spent MLS generation is
                # only a gap the receiver skips).
                tables.delete_batch(carrier)
                half = len(items) // 2
                self._e2e_send_batch(s, items[:half], wall)
                self._e2e_send_batch(s, items[half:], wall)
                return
            self.log.warning("e2e_send_failed", peer=s.peer.short, error=str(exc))
            for q in items:
                self.store.set_outgoing_state(q.message_id, DeliveryState.FAILED,
                                              str(exc), at=wall)  # fmt: skip
            return
        if len(items) > 1 and self._e2e_batches is not None:
            self._e2e_batches[carrier] = [q.message_id for q in items[1:]]

    def _e2e_send_one(self, dst: NodeAddress, q: Queued, wall: float) -> None:
        try:
            payload = self.e2e.seal_or_queue(dst, q.envelope, q.message_id, now=wall,
                                             expires_at=q.expires_at)  # fmt: skip
            if payload is not None:
                self.core.send(dst, payload, now=self._now(), message_id=q.message_id,
                               lifetime=max(q.expires_at - wall, 0.001))  # fmt: skip
        except StoreError:
            raise
        except MeshdError as exc:
            self._tables().delete_sealed(q.message_id)
            self.store.set_outgoing_state(q.message_id, DeliveryState.FAILED, str(exc), at=wall)

    def _sessions_unseal(self, message_id: bytes) -> None:
        """The core refused a sealed payload: forget its carrier row."""
        self._tables().delete_sealed(message_id)

    def _e2e_drain(self, wall: float) -> None:
        """Carry out what the session layer queued."""
        e2e = self._e2e
        if e2e is None:
            return
        core = self.core
        while e2e.actions:
            action = e2e.actions.popleft()
            if isinstance(action, SendPayload):
                try:
                    core.send(action.dst, action.payload, now=self._now(),
                              lifetime=action.lifetime, message_id=action.carrier_id)  # fmt: skip
                except MeshdError as exc:
                    self.log.warning("e2e_send_failed", peer=action.dst.short, error=str(exc))
                    continue
                if action.carrier_id is not None:
                    # An app message sealed late (its key package arrived): like a send,
                    # its frame waits for the fsync of the rows that record it.
                    self.store.durable_pending = True
                if action.carrier_id is not None and self._e2e_resends is not None:
                    row = self._tables().sealed(action.carrier_id)
                    if row is not None and row.message_id != action.carrier_id:
                        self._e2e_resends[action.carrier_id] = row.message_id
            elif isinstance(action, Deliver):
                self.store.add_incoming(message_id=action.message_id, app_id=action.app_id,
                                        src=action.src, content=action.content,
                                        received_at=wall, hops=action.hops)  # fmt: skip
            elif isinstance(action, Expired):
                self.store.set_outgoing_state(action.message_id, DeliveryState.FAILED,
                                              action.reason, at=wall)  # fmt: skip
            elif isinstance(action, Opened):  # the peer joined: now it is the truth
                for mid in action.message_ids:
                    self.store.set_outgoing_state(mid, DeliveryState.DELIVERED, None, at=wall)
            elif isinstance(action, Notice):
                self._e2e_notice(action, wall)
        if e2e.published is None and self._core is not None:
            self._e2e_publish()

    _core: Any

    def _e2e_notice(self, notice: Notice, wall: float) -> None:
        log = self.log.warning if notice.warning else self.log.info
        log(f"e2e_{notice.kind}", peer=notice.peer.short, detail=notice.detail)
        kind = _NOTICE_EVENTS.get(notice.kind)
        if kind is not None:
            self.store.append_event(notice.app_id, kind, wall, peer=notice.peer,
                                    detail=notice.detail)  # fmt: skip

    # --- for the group layer ------------------------------------------------------------
    async def key_package_for(self, address: NodeAddress, *, timeout: float) -> bytes:  # noqa: ASYNC109
        """A validated, unused key package of ``address``: cached (from its announce or
        an earlier KP_RESPONSE), else fetched through the mesh (KP_REQUEST)."""
        e2e = self.e2e
        wall = time.time()
        cached = e2e.take_kp(address, now=wall)
        if cached is not None:
            return cached
        assert self._loop is not None
        fut: asyncio.Future[bytes] = self._loop.create_future()

        def resolve(data: bytes) -> None:
            if not fut.done():
                fut.set_result(data)

        e2e.wait_kp(address, resolve)
        e2e.request_kp(address, now=wall, force=True)
        self._e2e_drain(wall)
        self._schedule_pump()
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise DeadlineExceeded(
                f"no key package from {address.text} within {timeout:g} s", field="address"
            ) from None
        finally:
            e2e.cancel_wait(address, resolve)
        got = e2e.take_kp(address, now=time.time())
        if got is None:  # consumed meanwhile by a session setup: ask again
            raise Unavailable(f"the key package of {address.text} was used meanwhile")
        return got

    # --- SessionsApi ---------------------------------------------------------------------
    def _may_admin(self, caller: Caller) -> None:
        if not caller.is_admin and caller.uid != _daemon_uid():
            raise PermissionDenied("needs root, group meshd-admin or meshd's own user")

    async def connect(self, caller: Caller, dst: NodeAddress, text: bytes) -> RequestInfo:
        """Send a connection request (with an optional first message) to ``dst``."""
        if not self._running:
            raise Unavailable("the node is shutting down")
        app_id = self._authorize(caller)
        if dst.is_broadcast:
            raise InvalidArgument("cannot connect to the broadcast address", field="address")
        wall = time.time()
        first = None
        if text:
            first = await self._connect_first(caller, app_id, dst, text, wall)
        else:
            self.e2e.connect(dst, app_id, now=wall)
            self._e2e_drain(wall)
        await self._durable()
        if first is not None:
            return first
        return next(r for r in self.e2e.requests("outgoing") if r.peer == dst)

    async def _connect_first(
        self, caller: Caller, app_id: str, dst: NodeAddress, text: bytes, wall: float
    ) -> RequestInfo:
        # The first message is an ordinary app message (history, delivery states); only
        # its INIT carries the REQUEST flag.
        message_id = os.urandom(8)
        lifetime = self._e2e_lifetime()
        envelope = Envelope(app_id, bytes(text))
        payload = self.e2e.connect(dst, app_id, now=wall,
                                   first=(message_id, envelope, wall + lifetime))  # fmt: skip
        if payload is not None:
            try:
                self.core.send(dst, payload, now=self._now(), message_id=message_id)
            except MeshdError:
                self._sessions_unseal(message_id)
                raise
        self.store.add_outgoing(message_id=message_id, app_id=app_id, dst=dst,
                                content=bytes(text), created_at=wall,
                                expires_at=wall + lifetime)  # fmt: skip
        self._e2e_drain(wall)
        return next(r for r in self.e2e.requests("outgoing") if r.peer == dst)

    def _e2e_lifetime(self) -> float:
        cfg: CoreConfig | None = getattr(self, "_core_config", None)
        return float((cfg or CoreConfig()).message_lifetime)

    def list_requests(self, caller: Caller, direction: str | None = None) -> list[RequestInfo]:
        self._authorize(caller)
        if direction not in (None, "incoming", "outgoing"):
            raise InvalidArgument("direction is incoming or outgoing", field="direction")
        return self.e2e.requests(direction)

    async def accept_request(self, caller: Caller, peer: NodeAddress) -> None:
        self._may_admin(caller)
        self.e2e.accept(peer, now=time.time())
        self._e2e_drain(time.time())
        await self._durable()

    async def reject_request(self, caller: Caller, peer: NodeAddress) -> None:
        self._may_admin(caller)
        self.e2e.reject(peer, now=time.time())
        self._e2e_drain(time.time())
        await self._durable()

    async def cancel_request(self, caller: Caller, peer: NodeAddress) -> None:
        self._authorize(caller)
        self.e2e.cancel(peer, now=time.time())
        self._e2e_drain(time.time())
        await self._durable()

    def get_policy(self) -> PolicyInfo:
        return PolicyInfo(self.e2e.accept_from.value)

    async def set_policy(self, caller: Caller, accept_from: str) -> PolicyInfo:
        self._may_admin(caller)
        try:
            value = AcceptFrom(accept_from)
        except ValueError:
            raise InvalidArgument("accept_from is anyone or contacts",
                                  field="accept_from") from None  # fmt: skip
        self.e2e.set_accept_from(value)
        await self._durable()
        return PolicyInfo(value.value)

    def session_info(self, peer: NodeAddress) -> SessionInfo:
        return self.e2e.info(peer)


def _daemon_uid() -> int:
    return os.getuid()


__all__ = ["SessionMessages", "mls_at_rest_key", "sw"]
