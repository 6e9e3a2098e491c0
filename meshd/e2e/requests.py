"""Connection requests on top of 1:1 sessions, sans-IO: policy, send, accept, reject,
cancel, expiry, bounded pending lists.

``accept_from`` decides who may open a session: ``anyone`` (the default, so ``meshctl
send`` works out of the box) or ``contacts`` (peers this node accepted, wrote to first, or
named/verified in its contacts). Under ``contacts`` a first message from a stranger is
held, undecrypted, as an *incoming request*: the Welcome is used only when the user
accepts, and then the held messages are opened and delivered. A request sent with
``connect`` carries the Welcome and an optional first message (<= 4 KiB) and stays in the
sender's *outgoing* list until the peer accepts (CONN_ACCEPT: an MLS message that proves
it joined), rejects, the sender cancels, or it expires.

What the sender's app is told: a message the core reports delivered while the peer has
not joined the session yet is RELAYED for the app (``defer_delivered``), and DELIVERED
(``Opened``) once the peer proves it joined; a peer that holds it as an incoming request
says so (CONN_HELD), and the sender's app gets an ``awaiting_acceptance`` event per
message; a reject or cancel fails them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace

from meshd.address import NodeAddress
from meshd.crypto import tofu
from meshd.crypto.identity import Identity
from meshd.crypto.mls.engine import MlsEngine
from meshd.e2e import session_wire as sw
from meshd.e2e.session_updates import DEFAULT_UPDATE_INTERVAL_S, SessionUpdates
from meshd.e2e.sessions import Expired, Notice, Opened, SendPayload
from meshd.envelope import Envelope
from meshd.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from meshd.store.sessions import RequestRow, SessionRow, SessionTables

MAX_INITIAL_MESSAGE = 4096
MAX_INCOMING_REQUESTS = 64
MAX_OUTGOING_REQUESTS = 64
MAX_HELD_PER_PEER = 16
REQUEST_LIFETIME_S = 7 * 24 * 3600.0
INCOMING, OUTGOING = "incoming", "outgoing"
# e2e_settings keys: "held:<gid>" (the peer holds our messages in that group as a request),
# "acked:<message id>" = "<peer> <gid>" (delivered to its node, not opened yet).
_HELD, _ACKED = "held:", "acked:"


class AcceptFrom(enum.Enum):
    ANYONE = "anyone"
    CONTACTS = "contacts"


@dataclass(frozen=True, slots=True)
class RequestInfo:
    peer: NodeAddress
    direction: str
    created_at: float
    expires_at: float
    messages: int  # incoming: messages held until accepted


class E2eSessions(SessionUpdates):
    """Sessions plus the connection-request layer (one per node)."""

    def __init__(
        self,
        engine: MlsEngine,
        tables: SessionTables,
        *,
        identity: Identity,
        pinned: Callable[[NodeAddress], tofu.Contact | None] = lambda _a: None,
        default_accept_from: AcceptFrom = AcceptFrom.ANYONE,
        update_interval: float = DEFAULT_UPDATE_INTERVAL_S,
    ) -> None:
        super().__init__(engine, tables, identity=identity, pinned=pinned,
                         update_interval=update_interval)  # fmt: skip
        stored = tables.setting("accept_from")
        self.accept_from = AcceptFrom(stored) if stored else default_accept_from
        self._accepted = tables.accepted()
        self._held_by_peer = {bytes.fromhex(k[len(_HELD) :])
                              for k in tables.settings_prefixed(_HELD)}  # fmt: skip
        self._acked: dict[bytes, tuple[NodeAddress, bytes]] = {}
        for key, value in tables.settings_prefixed(_ACKED).items():
            peer_hex, gid_hex = value.split(" ")
            self._acked[bytes.fromhex(key[len(_ACKED) :])] = (
                NodeAddress(bytes.fromhex(peer_hex)), bytes.fromhex(gid_hex))

    # --- policy -------------------------------------------------------------------------
    def set_accept_from(self, value: AcceptFrom) -> None:
        self.accept_from = value
        self.tables.set_setting("accept_from", value.value)

    def is_accepted(self, peer: NodeAddress) -> bool:
        if peer in self._accepted:
            return True
        contact = self._pinned(peer)
        return contact is not None and (contact.verified or bool(contact.name))

    def _accept_peer(self, peer: NodeAddress, *, now: float) -> None:
        if peer not in self._accepted:
            self._accepted.add(peer)
            self.tables.set_accepted(peer, True, now=now)

    def accepts(self, src: NodeAddress, frame: sw.SessionInit) -> bool:
        if self.accept_from is AcceptFrom.ANYONE or self.is_accepted(src):
            return True
        self._hold(src, frame)
        return False

    def _hold(self, src: NodeAddress, frame: sw.SessionInit) -> None:
        now = self._now
        if self._request(src, INCOMING) is None:
            if len(self.tables.requests(INCOMING)) >= MAX_INCOMING_REQUESTS:
                reject = self.signed(src, sw.ConnReject(sw.RejectReason.BUSY, frame.group_id))
                self.actions.append(SendPayload(src, reject, None))
                self.actions.append(Notice("connection_rejected", src,
                                           "incoming request list full", warning=True))  # fmt: skip
                return
            self.tables.put_request(
                RequestRow(src, INCOMING, frame.group_id, "", now, now + REQUEST_LIFETIME_S)
            )
            self.actions.append(Notice("connection_request", src, "incoming"))
            # Its core saw our ACK (DELIVERED): tell it the app did not get it yet.
            held = self.signed(src, sw.ConnHeld(frame.group_id))
            self.actions.append(SendPayload(src, held, None))
        if self.tables.held_count(src) < MAX_HELD_PER_PEER:
            self.tables.hold(src, frame.encode(), hops=self._hops, now=now)

    # --- receiving hooks ---------------------------------------------------------------
    _now: float = 0.0
    _hops: int = 0
    _with_message = False

    def receive(self, src: NodeAddress, payload: bytes, *, hops: int, now: float) -> None:
        self._now, self._hops = now, hops
        super().receive(src, payload, hops=hops, now=now)

    def on_connection_frame(self, src: NodeAddress, frame: sw.SessionFrame, *, now: float) -> None:
        if isinstance(frame, sw.ConnAccept):
            self.open_app(src, frame.message, hops=self._hops, now=now)
            s = self._sessions.get(src)
            req = self._request(src, OUTGOING)
            joined = s is not None and s.confirmed and self._groups.get(frame.group_id) == src
            if joined and req is not None:
                self.tables.delete_request(src, OUTGOING)
                self.actions.append(Notice("connection_accepted", src, "outgoing"))
        elif isinstance(frame, sw.ConnReject):
            req = self._request(src, OUTGOING)
            s = self._sessions.get(src)
            if req is None and (s is None or s.group_id != frame.group_id):
                return
            self.tables.delete_request(src, OUTGOING)
            self._fail_unopened(src, "connection request rejected")  # before the group goes
            if s is not None and s.group_id == frame.group_id and not s.confirmed:
                self._sessions.pop(src, None)
                self.tables.delete_session(src)
                self._drop_group(frame.group_id)
            self._fail_pending(src, "connection request rejected")
            self.actions.append(Notice("connection_rejected", src, frame.reason.name.lower()))
        elif isinstance(frame, sw.ConnHeld):
            s = self._sessions.get(src)
            gid = frame.group_id
            if s is None or s.group_id != gid or s.confirmed or gid in self._held_by_peer:
                return
            self._held_by_peer.add(gid)
            self.tables.set_setting(_HELD + gid.hex(), "")
            for row in self.tables.sealed_in_group(gid):
                self._awaiting(src, row.message_id)
        elif isinstance(frame, sw.ConnCancel):
            req = self._request(src, INCOMING)
            if req is None:
                return
            self.tables.delete_request(src, INCOMING)
            self.tables.drop_held(src)
            self.actions.append(Notice("connection_cancelled", src, "incoming"))

    def init_flags(self, peer: NodeAddress) -> sw.InitFlags:
        if self._request(peer, OUTGOING) is not None:
            return sw.InitFlags.REQUEST
        return sw.InitFlags.NONE

    def on_reset(self, src: NodeAddress, frame: sw.SessionReset, *, now: float) -> None:
        req = self._request(src, OUTGOING)
        before = len(self.actions)
        super().on_reset(src, frame, now=now)
        s = self._sessions.get(src)
        if req is None or req.group_id != frame.group_id or s is None:
            return
        if s.group_id != frame.group_id:  # rebuilt: the request now names the new group
            self.tables.put_request(replace(req, group_id=s.group_id))
            resent = any(isinstance(a, SendPayload) for a in list(self.actions)[before:])
            if not resent:
                self._bare_request(s)  # it carried no message: ask again

    # --- the user's side ---------------------------------------------------------------
    def connect(
        self,
        dst: NodeAddress,
        app_id: str,
        *,
        now: float,
        first: tuple[bytes, Envelope, float] | None = None,
    ) -> bytes | None:
        """Send a connection request to ``dst``; ``first`` = (message id, envelope,
        expires_at) of the initial message (its history row is the caller's). Returns
        the payload to send under that message id (None: waiting for a key package, or
        no first message: the bare request is queued as an action)."""
        if dst == self.own:
            raise InvalidArgument("cannot connect to this node itself", field="address")
        s = self._sessions.get(dst)
        if s is not None and s.confirmed:
            raise AlreadyExists(f"already connected to {dst.text}", field="address")
        if self._request(dst, INCOMING) is not None:
            raise FailedPrecondition(
                f"{dst.text} already asked to connect: accept its request instead "
                f"(`meshctl requests accept {dst.text}`)",
                field="address",
            )
        if self._request(dst, OUTGOING) is not None:
            raise AlreadyExists(f"a request to {dst.text} is already pending", field="address")
        if len(self.tables.requests(OUTGOING)) >= MAX_OUTGOING_REQUESTS:
            raise ResourceExhausted(f"{MAX_OUTGOING_REQUESTS} outgoing requests pending")
        if first is not None and len(first[1].content) > MAX_INITIAL_MESSAGE:
            raise InvalidArgument(f"the initial message is at most {MAX_INITIAL_MESSAGE} bytes",
                                  field="text")  # fmt: skip
        self._accept_peer(dst, now=now)
        gid = s.group_id if s is not None else None
        self.tables.put_request(RequestRow(dst, OUTGOING, gid, app_id, now,
                                           now + REQUEST_LIFETIME_S))  # fmt: skip
        self.actions.append(Notice("connection_request", dst, "outgoing", app_id=app_id))
        if first is not None:
            mid, env, expires = first
            self._with_message = True  # the first message carries the request
            try:
                return self.seal_or_queue(dst, env, mid, now=now, expires_at=expires,
                                          flags=sw.InitFlags.REQUEST)  # fmt: skip
            finally:
                self._with_message = False
        if s is None:
            kp = self.take_kp(dst, now=now)
            if kp is None:
                self.request_kp(dst, now=now)
                return None
            s = self._create(dst, kp, now=now)
        self._bare_request(s)
        return None

    def _bare_request(self, s: SessionRow) -> None:
        assert s.welcome is not None
        init = sw.SessionInit(sw.InitFlags.REQUEST, s.group_id, s.welcome, b"").encode()
        self.actions.append(SendPayload(s.peer, init, None))

    def _create(self, peer: NodeAddress, kp: bytes, *, now: float) -> SessionRow:
        row = super()._create(peer, kp, now=now)
        req = self._request(peer, OUTGOING)
        if req is not None and req.group_id is None:
            self.tables.put_request(replace(req, group_id=row.group_id))
            waiting = any(p.flags & sw.InitFlags.REQUEST for p in self.tables.pending(peer))
            if not waiting and not self._with_message:
                self._bare_request(row)  # a request without a first message
        return row

    def accept(self, peer: NodeAddress, *, now: float) -> None:
        """Accept ``peer``'s incoming request: join, deliver what it sent, tell it."""
        self._require(peer, INCOMING)
        self._accept_peer(peer, now=now)
        self.tables.delete_request(peer, INCOMING)
        for held in self.tables.held(peer):
            self.receive(peer, held.payload, hops=held.hops, now=now)
        self.tables.drop_held(peer)
        self.actions.append(Notice("connection_accepted", peer, "incoming"))

    def reject(self, peer: NodeAddress, *, now: float) -> None:
        req = self._require(peer, INCOMING)
        self.tables.delete_request(peer, INCOMING)
        self.tables.drop_held(peer)
        if req.group_id is not None:
            payload = self.signed(peer, sw.ConnReject(sw.RejectReason.DECLINED, req.group_id))
            self.actions.append(SendPayload(peer, payload, None))
        self.actions.append(Notice("connection_rejected", peer, "incoming"))

    def cancel(self, peer: NodeAddress, *, now: float) -> None:
        req = self._require(peer, OUTGOING)
        self.tables.delete_request(peer, OUTGOING)
        self._fail_unopened(peer, "connection request cancelled")  # before the group goes
        s = self._sessions.get(peer)
        if s is not None and not s.confirmed:
            self._sessions.pop(peer, None)
            self.tables.delete_session(peer)
            self._drop_group(s.group_id)
        if req.group_id is not None:
            self.actions.append(SendPayload(peer, self.signed(peer, sw.ConnCancel(req.group_id)),
                                            None))  # fmt: skip
        self._fail_pending(peer, "connection request cancelled")
        self.actions.append(Notice("connection_cancelled", peer, "outgoing"))

    def requests(self, direction: str | None = None) -> list[RequestInfo]:
        return [
            RequestInfo(r.peer, r.direction, r.created_at, r.expires_at,
                        self.tables.held_count(r.peer) if r.direction == INCOMING else 0)
            for r in self.tables.requests(direction)
        ]  # fmt: skip

    def tick(self, *, now: float) -> None:
        super().tick(now=now)
        for r in self.tables.requests():
            if now < r.expires_at:
                continue
            self.tables.delete_request(r.peer, r.direction)
            if r.direction == INCOMING:
                self.tables.drop_held(r.peer)
                if r.group_id is not None:
                    expired = self.signed(r.peer, sw.ConnReject(sw.RejectReason.EXPIRED,
                                                                r.group_id))  # fmt: skip
                    self.actions.append(SendPayload(r.peer, expired, None))
            else:  # never accepted: what its node held was never opened
                self._fail_unopened(r.peer, "connection request expired")
            self.actions.append(Notice("connection_expired", r.peer, r.direction))

    # --- what the sender's app is told -------------------------------------------------
    def unopened(self, peer: NodeAddress) -> bool:
        """Whether ``peer`` has not proved yet that it joined our session (so a message
        its node acknowledged may sit unopened in its request list)."""
        s = self._sessions.get(peer)
        return s is not None and not s.confirmed

    def defer_delivered(self, peer: NodeAddress, message_ids: list[bytes]) -> None:
        """The core reported ``message_ids`` delivered to ``peer``, which has not joined:
        DELIVERED for the app once it does (an ``Opened`` action), FAILED if it rejects."""
        s = self._sessions.get(peer)
        if s is None:
            return
        for mid in message_ids:
            self._acked[mid] = (peer, s.group_id)
            self.tables.set_setting(_ACKED + mid.hex(), f"{peer.raw.hex()} {s.group_id.hex()}")

    def peer_in_epoch(self, src: NodeAddress, group_id: bytes, epoch: int) -> None:
        super().peer_in_epoch(src, group_id, epoch)
        if self._acked:  # src opened a message in group_id: it is in that group
            opened = [m for m, (p, g) in self._acked.items() if p == src and g == group_id]
            if opened:
                self._forget_acked(opened)
                self.actions.append(Opened(tuple(opened)))

    def _seal(self, s: SessionRow, envelope: Envelope, message_id: bytes, carrier_id: bytes,
              *, now: float, expires_at: float, flags: sw.InitFlags = sw.InitFlags.NONE,
              ) -> bytes:  # fmt: skip
        payload = super()._seal(s, envelope, message_id, carrier_id, now=now,
                                expires_at=expires_at, flags=flags)  # fmt: skip
        if s.group_id in self._held_by_peer and not s.confirmed:
            self._awaiting(s.peer, message_id)
        return payload

    def group_dropped(self, group_id: bytes) -> None:
        super().group_dropped(group_id)
        if group_id in self._held_by_peer:
            self._held_by_peer.discard(group_id)
            self.tables.delete_setting(_HELD + group_id.hex())
        # Re-sealed in the next group: their new carriers are acknowledged again.
        self._forget_acked([m for m, (_p, g) in self._acked.items() if g == group_id])

    def _awaiting(self, peer: NodeAddress, message_id: bytes) -> None:
        content = self.tables.outgoing_content(message_id)
        self.actions.append(Notice("awaiting_acceptance", peer, message_id.hex(),
                                   app_id=None if content is None else content[0]))  # fmt: skip

    def _fail_unopened(self, peer: NodeAddress, reason: str) -> None:
        failed = [m for m, (p, _g) in self._acked.items() if p == peer]
        self._forget_acked(failed)
        for mid in failed:
            self.actions.append(Expired(mid, reason))

    def _forget_acked(self, message_ids: list[bytes]) -> None:
        for mid in message_ids:
            del self._acked[mid]
            self.tables.delete_setting(_ACKED + mid.hex())

    # --- helpers ------------------------------------------------------------------------
    def _request(self, peer: NodeAddress, direction: str) -> RequestRow | None:
        return next((r for r in self.tables.requests(direction) if r.peer == peer), None)

    def _require(self, peer: NodeAddress, direction: str) -> RequestRow:
        req = self._request(peer, direction)
        if req is None:
            raise NotFound(f"no {direction} request for {peer.text}", field="address")
        return req

    def _fail_pending(self, peer: NodeAddress, reason: str) -> None:
        for p in self.tables.pending(peer):
            self.tables.delete_pending(p.message_id)
            self.actions.append(Expired(p.message_id, reason))


__all__ = ["AcceptFrom", "E2eSessions", "RequestInfo"]
