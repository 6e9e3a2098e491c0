"""Key packages of 1:1 sessions, sans-IO: the one this node publishes, those it hands out
on request (bounded in mls-rs memory), and peers' ones it caches and validates.

A mixin of ``meshd.e2e.sessions.SessionManager``, which owns the engine, the actions queue
and the sessions; split out to keep that module short.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from meshd.address import NodeAddress
from meshd.crypto import tofu
from meshd.crypto.mls import wire as mls_wire
from meshd.crypto.mls.engine import KeyPackage, MlsEngine
from meshd.e2e import session_wire as sw
from meshd.e2e.session_actions import Action, Notice, SendPayload
from meshd.errors import FailedPrecondition, InvalidArgument, MeshdError, WireError
from meshd.store.sessions import SessionRow

#: Rotate the published key package this often (and after a restart, and once used).
KP_ROTATE_S = 24 * 3600.0
#: A KP_REQUEST is not repeated for a peer within this (its response is on its way);
#: it lives twice as long in the outbox, so at most two are pending per peer.
KP_REQUEST_INTERVAL_S = 30.0
KP_REQUEST_LIFETIME_S = 2 * KP_REQUEST_INTERVAL_S
#: At most this many fresh key packages per requesting peer within KP_RESPONSE_REUSE_S.
KP_RESPONSE_BURST = 8
KP_RESPONSE_REUSE_S = 60.0
#: Key packages whose private keys may sit in mls-rs memory at once (~1.3 KB each, never
#: freed by the binding); past it the engine drops them all (see drop_key_packages).
MAX_KEY_PACKAGES_IN_MEMORY = 2048
_CACHE_MAX = 4096
#: KP_REQUEST ids remembered per peer: a KP_RESPONSE must answer one of them.
_REQUEST_IDS_KEPT = 4


class KeyPackages:
    """Key package state and handling of one node's session manager."""

    engine: MlsEngine
    own: NodeAddress
    actions: deque[Action]
    _pinned: Callable[[NodeAddress], tofu.Contact | None]
    _sessions: dict[NodeAddress, SessionRow]

    if TYPE_CHECKING:

        def flush(self, peer: NodeAddress, *, now: float) -> None: ...

        def signed(self, dst: NodeAddress, frame: sw.SignedFrame) -> bytes: ...

    def _init_key_packages(self) -> None:
        self._kp_cache: dict[NodeAddress, bytes] = {}
        self._kp_used: set[bytes] = set()  # refs of peers' key packages we consumed
        self._kp_requested: dict[NodeAddress, float] = {}
        self._kp_request_ids: dict[NodeAddress, deque[bytes]] = {}
        self._kp_waiters: dict[NodeAddress, list[Callable[[bytes], None]]] = {}
        self._kp_for_peer: dict[NodeAddress, list[tuple[KeyPackage, float]]] = {}
        self.published: KeyPackage | None = None
        self.max_key_packages = MAX_KEY_PACKAGES_IN_MEMORY

    # --- own key package ----------------------------------------------------------------
    def publish(self, *, now: float) -> bytes | None:
        """New announce extensions when the published key package must change, else None."""
        kp = self.published
        # A Welcome of the group layer may have used it too (engines that can tell).
        used = getattr(self.engine, "key_package_used", None)
        fresh = kp is not None and now < kp.created_at + KP_ROTATE_S and now < kp.expires_at
        if kp is not None and fresh and not (callable(used) and used(kp.ref)):
            return None
        self._bound_key_packages()
        self.published = self.engine.generate_key_package(now=now)
        return sw.encode_extensions({sw.EXT_KEY_PACKAGE: self.published.data})

    def _fresh_kp(self, peer: NodeAddress, *, now: float) -> bytes:
        """A new key package for one peer; past KP_RESPONSE_BURST within
        KP_RESPONSE_REUSE_S the last one again (bounds the in-memory private keys a
        requester can make this node hold)."""
        made = [t for t in self._kp_for_peer.get(peer, []) if now - t[1] < KP_RESPONSE_REUSE_S]
        if len(made) >= KP_RESPONSE_BURST:
            return made[-1][0].data
        if len(self._kp_for_peer) >= _CACHE_MAX:
            self._kp_for_peer.clear()
        if self._bound_key_packages():
            made = []
        kp = self.engine.generate_key_package(now=now)
        self._kp_for_peer[peer] = [*made, (kp, now)]
        return kp.data

    def _bound_key_packages(self) -> bool:
        """Before making a key package: at the bound, drop every one held in memory (the
        published one and those handed out die; a Welcome for one is answered with a
        SESSION_RESET carrying a fresh one, as after a restart). True if it did."""
        if self.engine.key_packages_in_memory < self.max_key_packages:
            return False
        self.engine.drop_key_packages()
        self._kp_for_peer.clear()
        self.published = None
        self.actions.append(Notice("key_packages_dropped", self.own,
                                   f"{self.max_key_packages} key packages in memory"))  # fmt: skip
        return True

    # --- peers' key packages ------------------------------------------------------------
    def validate_kp(self, peer: NodeAddress, data: bytes, *, now: float) -> bytes:
        """``data`` if it is a valid key package of ``peer`` under its TOFU pin, else raise."""
        member = self.engine.inspect_key_package(data, now=now)
        if member.address != peer:
            raise InvalidArgument(
                f"key package belongs to {member.address.short}, not {peer.short}",
                field="key_package",
            )
        contact = self._pinned(peer)
        if contact is not None:
            if contact.signing_key != member.node_key:
                raise FailedPrecondition("key package node key is not the pinned key",
                                         field="key_package")  # fmt: skip
            if contact.pending_exchange_key is not None:
                raise FailedPrecondition(
                    f"{peer.text} presented a changed key: refused until "
                    f"`meshctl contacts trust {peer.text}`",
                    field="key_package",
                )
        return data

    def learn_kp(self, peer: NodeAddress, data: bytes, *, now: float) -> bool:
        """Cache a peer's key package (announce or KP_RESPONSE); flush what waited for it."""
        if peer == self.own:
            return False
        try:
            ref = mls_wire.key_package_ref(data)
            if ref in self._kp_used:
                return False
            self.validate_kp(peer, data, now=now)
        except (MeshdError, WireError) as exc:
            self.actions.append(Notice("key_package_refused", peer, str(exc), warning=True))
            return False
        if len(self._kp_cache) >= _CACHE_MAX and peer not in self._kp_cache:
            self._kp_cache.clear()
        self._kp_cache[peer] = data
        for resolve in self._kp_waiters.pop(peer, []):
            resolve(data)
        self.flush(peer, now=now)
        return True

    def learn_extensions(self, peer: NodeAddress, extensions: bytes, *, now: float) -> None:
        if not extensions:
            return
        try:
            items = sw.decode_extensions(extensions)
        except WireError as exc:
            self.actions.append(Notice("key_package_refused", peer, str(exc), warning=True))
            return
        kp = items.get(sw.EXT_KEY_PACKAGE)
        if kp is not None:
            self.learn_kp(peer, kp, now=now)

    def has_kp(self, peer: NodeAddress) -> bool:
        """Whether a session with ``peer`` exists or can be set up without a round trip."""
        return peer in self._sessions or peer in self._kp_cache

    def take_kp(self, peer: NodeAddress, *, now: float) -> bytes | None:
        """A cached, still valid key package of ``peer``, consumed (single use)."""
        data = self._kp_cache.pop(peer, None)
        if data is None:
            return None
        try:
            self.validate_kp(peer, data, now=now)
        except MeshdError:
            return None
        self._kp_used.add(mls_wire.key_package_ref(data))
        if len(self._kp_used) > _CACHE_MAX:
            self._kp_used.clear()
        return data

    def request_kp(self, peer: NodeAddress, *, now: float, force: bool = False) -> None:
        last = self._kp_requested.get(peer)
        if not force and last is not None and now - last < KP_REQUEST_INTERVAL_S:
            return
        self._kp_requested[peer] = now
        rid = os.urandom(8)
        if len(self._kp_request_ids) >= _CACHE_MAX and peer not in self._kp_request_ids:
            self._kp_request_ids.clear()
        self._kp_request_ids.setdefault(peer, deque(maxlen=_REQUEST_IDS_KEPT)).append(rid)
        request = self.signed(peer, sw.KpRequest(rid))
        # Short-lived: tick() asks again while messages wait (also after a restart).
        self.actions.append(SendPayload(peer, request, None, KP_REQUEST_LIFETIME_S))

    def wait_kp(self, peer: NodeAddress, resolve: Callable[[bytes], None]) -> None:
        self._kp_waiters.setdefault(peer, []).append(resolve)

    def cancel_wait(self, peer: NodeAddress, resolve: Callable[[bytes], None]) -> None:
        waiters = self._kp_waiters.get(peer, [])
        if resolve in waiters:
            waiters.remove(resolve)
