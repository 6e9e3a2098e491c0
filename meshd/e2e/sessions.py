"""1:1 MLS sessions, sans-IO: peer -> 1:1 group, key packages, sealing, opening, reset.

The manager is fed calls with ``now`` (unix seconds) passed in; it drives the injected
``MlsEngine`` and the ``SessionTables`` (the node's store, committed by the node) and
queues ``Action``s the node carries out (send a payload through the core, deliver a
message to an app, append an event). Ordering guarantees the node relies on:

* MLS state changes are persisted by the engine before a call returns, i.e. before the
  ciphertext they produced is even queued; the node sends frames only after its store
  commit, so a session row never refers to MLS state that is not on disk.
* A message an app was told is accepted is either sealed (``e2e_sealed``, the exact
  payload handed to the core, restored after a restart) or waiting (``e2e_pending``,
  sealed when a key package for the peer arrives), in the same transaction as its
  history row.

Setup: the sender takes the peer's key package (from its announce extensions or a
KP_RESPONSE), creates a group, adds the peer, and sends SESSION_INIT (Welcome + first
ciphertext). The Welcome rides along with every message until the sender knows the peer
joined: the joiner answers with CONN_ACCEPT, an MLS message in the group. If both ends set up at
once, each joins the other's group too and both send in the one with the lower group id.

Control payloads without MLS protection (KP_REQUEST/RESPONSE, SESSION_RESET, CONN_REJECT,
CONN_CANCEL) are signed with the node's Ed25519 key and refused unless the signature is by
the key the source address derives from (and the TOFU-pinned one). Periodic self-updates
(post-compromise security) live in meshd/e2e/session_updates.py.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from meshd.address import NodeAddress
from meshd.crypto import tofu
from meshd.crypto.identity import Identity
from meshd.crypto.mls import wire as mls_wire
from meshd.crypto.mls.engine import ApplicationMessage, MlsEngine
from meshd.e2e import session_wire as sw
from meshd.e2e.key_packages import KeyPackages
from meshd.e2e.session_actions import Action, Deliver, Expired, Notice, Opened, SendPayload
from meshd.envelope import Envelope
from meshd.errors import (
    AlreadyExists,
    CryptoError,
    EpochAheadError,
    FailedPrecondition,
    InvalidArgument,
    MeshdError,
    NotFound,
    ResourceExhausted,
    WireError,
)
from meshd.store.sessions import PendingRow, SealedRow, SessionRow, SessionTables

#: At most one SESSION_RESET per group within this (every message in it would trigger one).
RESET_INTERVAL_S = 10.0
#: Finished sealed carriers are kept this long (a RESET re-sends what a group carried).
SEALED_KEEP_S = 3600.0
#: Messages waiting for a key package, all peers together (the core's outbox bound).
MAX_PENDING = 10_000



@dataclass(frozen=True, slots=True)
class SessionInfo:
    peer: NodeAddress
    group_id: bytes
    epoch: int
    established: bool  # the peer is known to have joined


class SessionManager(KeyPackages):
    """One node's 1:1 sessions. Event-loop thread only; ``now`` is unix time."""

    def __init__(
        self,
        engine: MlsEngine,
        tables: SessionTables,
        *,
        identity: Identity,
        pinned: Callable[[NodeAddress], tofu.Contact | None] = lambda _a: None,
    ) -> None:
        if identity.public.signing_key != engine.node_key:
            raise InvalidArgument("the MLS engine belongs to another identity", field="identity")
        self.engine = engine
        self.tables = tables
        self.identity = identity
        self.own = engine.address
        self._pinned = pinned
        self.actions: deque[Action] = deque()
        self._sessions: dict[NodeAddress, SessionRow] = {s.peer: s for s in tables.sessions()}
        self._groups: dict[bytes, NodeAddress] = tables.groups()
        mls_groups = set(engine.groups())
        for gid in [g for g in self._groups if g not in mls_groups]:
            del self._groups[gid]  # MLS state lost (e.g. the mls dir was wiped)
            tables.delete_group(gid)
        for peer in [p for p, s in self._sessions.items() if s.group_id not in mls_groups]:
            del self._sessions[peer]
            tables.delete_session(peer)
        self._init_key_packages()
        self._resets: dict[bytes, float] = {}

    # --- sessions -----------------------------------------------------------------------
    def session(self, peer: NodeAddress) -> SessionRow | None:
        return self._sessions.get(peer)

    def info(self, peer: NodeAddress) -> SessionInfo:
        s = self._sessions.get(peer)
        if s is None:
            raise NotFound(f"no session with {peer.text}", field="address")
        return SessionInfo(peer, s.group_id, self.engine.epoch(s.group_id), s.confirmed)

    def _create(self, peer: NodeAddress, kp: bytes, *, now: float) -> SessionRow:
        gid = self.engine.create_group()
        try:
            result = self.engine.add_members(gid, [kp], now=now)
        except MeshdError:
            self.engine.forget_group(gid)
            raise
        assert result.welcome is not None
        row = SessionRow(peer, gid, False, result.welcome, now)
        self._set_session(row)
        self._groups[gid] = peer
        self.tables.put_group(gid, peer, now=now)
        return row

    def _set_session(self, row: SessionRow) -> None:
        self._sessions[row.peer] = row
        self.tables.put_session(row)

    def _confirm(self, peer: NodeAddress, group_id: bytes) -> None:
        s = self._sessions.get(peer)
        if s is not None and s.group_id == group_id and not s.confirmed:
            self._set_session(replace(s, confirmed=True, welcome=None))
            self.actions.append(Notice("session_established", peer, group_id.hex()))

    def _drop_group(self, group_id: bytes) -> None:
        self._groups.pop(group_id, None)
        self.tables.delete_group(group_id)
        self.group_dropped(group_id)
        with contextlib.suppress(NotFound):
            self.engine.forget_group(group_id)

    # --- sending ------------------------------------------------------------------------
    def seal_or_queue(
        self,
        dst: NodeAddress,
        envelope: Envelope,
        message_id: bytes,
        *,
        now: float,
        expires_at: float,
        flags: sw.InitFlags = sw.InitFlags.NONE,
    ) -> bytes | None:
        """The payload to hand to the core under ``message_id``, or None when the message
        now waits for the peer's key package (stored; sealed by ``flush``)."""
        s = self._sessions.get(dst)
        if s is None:
            kp = self.take_kp(dst, now=now)
            if kp is not None:
                s = self._create(dst, kp, now=now)
        if s is None:
            if self.tables.pending_count() >= MAX_PENDING:
                raise ResourceExhausted(
                    f"{MAX_PENDING} messages already wait for key packages", field="dst"
                )
            self.tables.add_pending(PendingRow(message_id, dst, now, expires_at, int(flags)))
            self.request_kp(dst, now=now)
            return None
        return self._seal(s, envelope, message_id, message_id, now=now, expires_at=expires_at,
                          flags=flags)  # fmt: skip

    def _seal(
        self,
        s: SessionRow,
        envelope: Envelope,
        message_id: bytes,
        carrier_id: bytes,
        *,
        now: float,
        expires_at: float,
        flags: sw.InitFlags = sw.InitFlags.NONE,
    ) -> bytes:
        sealed = sw.Sealed(sw.SealedType.APP, message_id, envelope).encode()
        ciphertext = self.engine.encrypt(s.group_id, sealed)  # saved before frames leave
        payload = self.frame(s, ciphertext, self.flags_for(s, flags))
        self.tables.add_sealed(
            SealedRow(carrier_id, message_id, s.peer, s.group_id, payload, now, expires_at, False)
        )
        return payload

    def flags_for(self, s: SessionRow, flags: sw.InitFlags = sw.InitFlags.NONE) -> sw.InitFlags:
        """Flags for ``frame``: only a SESSION_INIT carries any, so the policy hook (a
        SELECT of the requests table) is skipped once the peer joined (profile: 1 %)."""
        if s.confirmed or s.welcome is None:
            return flags
        return flags | self.init_flags(s.peer)

    def frame(self, s: SessionRow, ciphertext: bytes, flags: sw.InitFlags) -> bytes:
        """The payload carrying ``ciphertext`` in ``s``'s group (with the Welcome or an
        unconfirmed self-update commit riding along)."""
        if s.confirmed or s.welcome is None:
            commit = self.pending_commit(s.group_id)
            if commit is not None:
                return sw.SessionCommit(commit, ciphertext).encode()
            return sw.SessionApp(ciphertext).encode()
        return sw.SessionInit(flags, s.group_id, s.welcome, ciphertext).encode()

    # --- hooks of the self-update layer (meshd/e2e/session_updates.py) ---------------
    def pending_commit(self, group_id: bytes) -> bytes | None:
        """Our own self-update commit in ``group_id`` the peer has not confirmed yet."""
        return None

    def on_commit(self, src: NodeAddress, frame: sw.SessionCommit, *, hops: int,
                  now: float) -> None:  # fmt: skip
        self.actions.append(Notice("message_undecryptable", src, "self-updates unsupported",
                                   warning=True))  # fmt: skip

    def peer_in_epoch(self, src: NodeAddress, group_id: bytes, epoch: int) -> None:
        """An application message of ``src`` opened in ``epoch`` (it is there)."""

    def expected_failure(self, group_id: bytes, epoch: int | None) -> bool:
        """Whether an undecryptable message is one of a losing fork branch (no warning)."""
        return False

    def group_dropped(self, group_id: bytes) -> None:
        """``group_id`` is gone (reset, reject, cancel): forget its per-group state."""

    # --- signed control payloads ------------------------------------------------------
    def signed(self, dst: NodeAddress, frame: sw.SignedFrame) -> bytes:
        """``frame`` as a payload to ``dst``, signed with this node's identity key."""
        return sw.sign_control(frame, self.identity, dst)

    def authentic(self, src: NodeAddress, payload: bytes) -> bool:
        """Whether a signed control payload really comes from ``src`` (else a notice)."""
        contact = self._pinned(src)
        why = sw.control_forgery(payload, src, self.own,
                                 None if contact is None else contact.signing_key)  # fmt: skip
        if why is None:
            return True
        name = sw.Kind(payload[0]).name
        self.actions.append(Notice("control_forged", src, f"{name} refused: {why}", warning=True))
        return False

    def flush(self, peer: NodeAddress, *, now: float) -> None:
        """Seal the messages waiting for ``peer`` once a session can exist."""
        waiting = self.tables.pending(peer)
        if not waiting:
            return
        s = self._sessions.get(peer)
        if s is None:
            kp = self.take_kp(peer, now=now)
            if kp is None:
                return
            s = self._create(peer, kp, now=now)
        for p in waiting:
            self.tables.delete_pending(p.message_id)
            if now >= p.expires_at:
                self.actions.append(Expired(p.message_id, "no key package for the peer in time"))
                continue
            content = self.tables.outgoing_content(p.message_id)
            if content is None:  # history pruned: nothing left to send
                continue
            payload = self._seal(s, Envelope(*content), p.message_id, p.message_id, now=now,
                                 expires_at=p.expires_at, flags=sw.InitFlags(p.flags))  # fmt: skip
            self.actions.append(SendPayload(peer, payload, p.message_id, p.expires_at - now))

    def resend_done(self, carrier_id: bytes) -> None:
        """A re-send carrier reached a final state: not to be restored after a restart.
        (A first carrier needs no mark: it is done once its message left the outbox.)"""
        self.tables.sealed_done(carrier_id)

    def tick(self, *, now: float) -> None:
        """Expire waiting messages, forget old carriers (call every few seconds)."""
        waiting: set[NodeAddress] = set()
        for p in self.tables.pending():
            if now >= p.expires_at:
                self.tables.delete_pending(p.message_id)
                self.actions.append(Expired(p.message_id, "no key package for the peer in time"))
            else:
                waiting.add(p.peer)
        for peer in waiting:
            if self.has_kp(peer):
                self.flush(peer, now=now)
            else:
                self.request_kp(peer, now=now)  # at most every KP_REQUEST_INTERVAL_S
        self.tables.prune_sealed(before=now - SEALED_KEEP_S)
        self._resets = {g: t for g, t in self._resets.items() if now - t < RESET_INTERVAL_S}

    # --- receiving ----------------------------------------------------------------------
    def receive(self, src: NodeAddress, payload: bytes, *, hops: int, now: float) -> None:
        """A 0x10..0x1F payload from ``src`` (authenticated by the core)."""
        try:
            frame = sw.decode(payload)
        except WireError as exc:
            self.actions.append(Notice("message_undecryptable", src, str(exc), warning=True))
            return
        if payload[0] in sw.SIGNED_KINDS and not self.authentic(src, payload):
            return
        if isinstance(frame, sw.SessionApp):
            self.open_app(src, frame.message, hops=hops, now=now)
        elif isinstance(frame, sw.SessionCommit):
            self.on_commit(src, frame, hops=hops, now=now)
        elif isinstance(frame, sw.SessionInit):
            self.on_init(src, frame, hops=hops, now=now)
        elif isinstance(frame, sw.KpRequest):
            kp = self._fresh_kp(src, now=now)
            response = self.signed(src, sw.KpResponse(frame.request_id, kp))
            self.actions.append(SendPayload(src, response, None))
        elif isinstance(frame, sw.KpResponse):
            if frame.request_id not in self._kp_request_ids.get(src, ()):
                why = "KP_RESPONSE to no request of ours"
                self.actions.append(Notice("key_package_refused", src, why, warning=True))
                return
            self._kp_requested.pop(src, None)
            self.learn_kp(src, frame.key_package, now=now)
        elif isinstance(frame, sw.SessionReset):
            self.on_reset(src, frame, now=now)
        else:
            self.on_connection_frame(src, frame, now=now)

    def on_connection_frame(self, src: NodeAddress, frame: sw.SessionFrame, *, now: float) -> None:
        """CONN_* frames (connection requests live in meshd/e2e/requests.py)."""

    def init_flags(self, peer: NodeAddress) -> sw.InitFlags:
        """Flags for SESSION_INITs to ``peer`` (policy hook: a pending request)."""
        return sw.InitFlags.NONE

    def accepts(self, src: NodeAddress, frame: sw.SessionInit) -> bool:
        """Whether a first message from ``src`` may open a session (policy hook)."""
        return True

    def on_init(self, src: NodeAddress, frame: sw.SessionInit, *, hops: int, now: float) -> None:
        if self._groups.get(frame.group_id) != src:
            if frame.group_id in self._groups:  # another peer's group id: refuse
                self.actions.append(Notice("message_undecryptable", src,
                                           "group id of another peer", warning=True))  # fmt: skip
                return
            if not self.accepts(src, frame):
                return
            if not self.join(src, frame, now=now):
                return
        if frame.message:
            self.open_app(src, frame.message, hops=hops, now=now)

    def join(self, src: NodeAddress, frame: sw.SessionInit, *, now: float) -> bool:
        """Join ``src``'s group from its Welcome; a SESSION_RESET when it cannot be used."""
        try:
            self.validate_member(src, now=now)
            joined = self.engine.join_group(frame.welcome, now=now)
        except AlreadyExists:
            joined = None
        except (NotFound, CryptoError, InvalidArgument, FailedPrecondition) as exc:
            self.reset(src, frame.group_id, sw.ResetReason.KEY_PACKAGE_GONE, str(exc), now=now)
            return False
        if joined is not None:
            others = {m.address for m in joined.members if m.verified} - {self.own}
            if joined.group_id != frame.group_id or others != {src}:
                self.engine.forget_group(joined.group_id)
                self.actions.append(Notice("message_undecryptable", src,
                                           "welcome is not for a 1:1 group with the sender",
                                           warning=True))  # fmt: skip
                return False
        self._groups[frame.group_id] = src
        self.tables.put_group(frame.group_id, src, now=now)
        if self.published is not None:
            try:
                targets = mls_wire.welcome_targets(frame.welcome)
            except WireError:
                targets = []
            if self.published.ref in targets:
                self.published = None  # used: the node publishes a new one at its next tick
        # Also after AlreadyExists (joined before a crash lost our row): the sender keeps
        # attaching the Welcome until it gets this.
        self.send_proof(src, frame.group_id)
        current = self._sessions.get(src)
        # Both ends may set up at once: each joins the other's group as well, and both
        # send in the one with the lower group id (deterministic on both sides).
        if current is None or frame.group_id < current.group_id:
            self._set_session(SessionRow(src, frame.group_id, True, None, now))
            self.actions.append(Notice("session_established", src, frame.group_id.hex()))
        return True

    def send_proof(self, src: NodeAddress, group_id: bytes) -> None:
        """CONN_ACCEPT: an MLS message in the group, so the sender knows this node joined
        (and stops attaching the Welcome)."""
        proof = sw.Sealed(sw.SealedType.CONTROL, os.urandom(8), None).encode()
        ciphertext = self.engine.encrypt(group_id, proof)
        self.actions.append(SendPayload(src, sw.ConnAccept(group_id, ciphertext).encode(), None))

    def validate_member(self, src: NodeAddress, *, now: float) -> None:
        contact = self._pinned(src)
        if contact is not None and contact.pending_exchange_key is not None:
            raise FailedPrecondition(f"{src.text} presented a changed key: refused until "
                                     "trusted", field="welcome")  # fmt: skip

    def open_app(self, src: NodeAddress, message: bytes, *, hops: int, now: float) -> None:
        try:
            info = self.engine.peek(message)
        except (MeshdError, WireError) as exc:
            self.actions.append(Notice("message_undecryptable", src, str(exc), warning=True))
            return
        gid = info.group_id
        if gid is None or self._groups.get(gid) != src:
            if gid is not None and gid not in self._groups:
                self.reset(src, gid, sw.ResetReason.UNKNOWN_GROUP, "unknown group", now=now)
            else:
                self.actions.append(Notice("message_undecryptable", src,
                                           "not a group of this peer", warning=True))  # fmt: skip
            return
        try:
            result = self.engine.process(message)
        except EpochAheadError as exc:
            # Commits we never got (e.g. the peer crashed between its MLS write and its
            # store commit): the group cannot catch up, rebuild it.
            self.reset(src, gid, sw.ResetReason.UNKNOWN_GROUP, str(exc), now=now)
            return
        except MeshdError as exc:
            expected = self.expected_failure(gid, info.epoch)
            self.actions.append(Notice("fork_message_dropped" if expected
                                       else "message_undecryptable", src, str(exc),
                                       warning=not expected))  # fmt: skip
            return
        if not isinstance(result, ApplicationMessage):
            # Commits travel in SESSION_COMMIT (on_commit): one in a plain SESSION_APP
            # skipped the fork rule. Applied already; the peer is in the new epoch.
            return
        if result.sender.address != src:
            self.actions.append(Notice("message_undecryptable", src,
                                       "sealed by another member", warning=True))  # fmt: skip
            return
        self._confirm(src, gid)
        self.peer_in_epoch(src, gid, result.epoch)
        try:
            records = sw.decode_sealed_records(result.plaintext)  # BATCH: coalesced sends
        except WireError as exc:
            self.actions.append(Notice("message_undecryptable", src, str(exc), warning=True))
            return
        for sealed in records:
            self.on_sealed(src, gid, sealed, hops=hops, now=now)

    def on_sealed(
        self, src: NodeAddress, group_id: bytes, sealed: sw.Sealed, *, hops: int, now: float
    ) -> None:
        if sealed.type is sw.SealedType.APP and sealed.envelope is not None:
            env = sealed.envelope
            self.actions.append(Deliver(src, sealed.message_id, env.app_id, env.content, hops))

    def reset(
        self, src: NodeAddress, group_id: bytes, reason: sw.ResetReason, why: str, *, now: float
    ) -> None:
        last = self._resets.get(group_id)
        if last is not None and now - last < RESET_INTERVAL_S:
            return
        self._resets[group_id] = now
        kp = self._fresh_kp(src, now=now)
        self.actions.append(Notice("session_reset_sent", src, why, warning=True))
        reset = self.signed(src, sw.SessionReset(reason, group_id, kp))
        self.actions.append(SendPayload(src, reset, None))

    def on_reset(self, src: NodeAddress, frame: sw.SessionReset, *, now: float) -> None:
        """The peer cannot use ``frame.group_id``: rebuild from its fresh key package and
        re-seal what that group carried (the receiver drops duplicates by message id)."""
        s = self._sessions.get(src)
        if self._groups.get(frame.group_id) != src:
            return
        try:
            kp = self.validate_kp(src, frame.key_package, now=now)
        except MeshdError as exc:
            self.actions.append(Notice("key_package_refused", src, str(exc), warning=True))
            return
        carried = self.tables.sealed_in_group(frame.group_id)
        self._drop_group(frame.group_id)
        if s is None or s.group_id != frame.group_id:
            return  # an old group of ours: nothing more to do
        self._sessions.pop(src, None)
        self.tables.delete_session(src)
        fresh = self._create(src, kp, now=now)
        self.actions.append(Notice("session_reset", src, frame.reason.name.lower()))
        self.reseal(fresh, carried, now=now)
        self.flush(src, now=now)

    def reseal(self, s: SessionRow, carried: list[SealedRow], *, now: float) -> None:
        """Seal again in ``s`` what the carriers ``carried`` held, each message under a new
        carrier id (the receiver delivers a message id once)."""
        seen: set[bytes] = set()
        # A coalesced carrier (meshd/e2e/coalesce.py) re-sends each of its members alone.
        carried_ids = [(m, row) for row in carried
                       for m in (row.message_id, *self.tables.batch_members(row.carrier_id))]
        for message_id, row in carried_ids:
            if message_id in seen or now >= row.expires_at:
                continue
            seen.add(message_id)
            content = self.tables.outgoing_content(message_id)
            if content is None:
                continue
            carrier = os.urandom(8)
            payload = self._seal(s, Envelope(*content), message_id, carrier, now=now,
                                 expires_at=row.expires_at)  # fmt: skip
            self.actions.append(SendPayload(s.peer, payload, carrier, row.expires_at - now))


__all__ = [
    "MAX_PENDING",
    "RESET_INTERVAL_S",
    "SEALED_KEEP_S",
    "Action",
    "Deliver",
    "Expired",
    "Notice",
    "Opened",
    "SendPayload",
    "SessionInfo",
    "SessionManager",
]
