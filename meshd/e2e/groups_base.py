"""Shared state and helpers of the group layer (``GroupManager`` and its incoming half)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity
from meshd.crypto.mls.engine import MlsEngine
from meshd.e2e.group_wire import (
    MAX_CATCHUP_ENTRIES,
    Action,
    CatchUpRequest,
    CatchUpResponse,
    Role,
    fragment,
)
from meshd.e2e.groups_events import (
    EpochAdvanced,
    GroupConfig,
    MemberAdded,
    MemberRemoved,
    Output,
    PayloadRefused,
    RoleChanged,
)
from meshd.e2e.groups_state import (
    BUFFER_MAX,
    Buffered,
    EpochView,
    GroupState,
    Reassembler,
)
from meshd.errors import MeshdError

Targets = tuple[tuple[NodeAddress, Role], ...]
_CATCHUP_SERVED = 64  # commits per catch-up response (more are asked for again)
STASH_MAX = 64  # payloads held for groups this node has not joined (yet)


class Refused(Exception):
    """A payload is refused; becomes a ``PayloadRefused`` event (never leaves the layer)."""

    def __init__(self, reason: str, group_id: bytes | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.group_id = group_id


class GroupBase:
    """Attributes set by ``GroupManager.__init__`` and the helpers both halves use."""

    engine: MlsEngine
    identity: Identity
    key: bytes
    address: NodeAddress
    config: GroupConfig
    _groups: dict[bytes, GroupState]
    _out: Output
    _reassembler: Reassembler
    _stashed: list[tuple[bytes, Buffered]]

    if TYPE_CHECKING:

        def _dispatch(
            self, src: NodeAddress, payload: bytes, now: float, received_at: float
        ) -> None: ...

    def _stash(self, gid: bytes, item: Buffered, now: float) -> None:
        """Hold a payload for a group we are not in, in case its Welcome comes later."""
        ttl = self.config.stash_ttl_s
        self._stashed = [(g, b) for g, b in self._stashed if b.received_at + ttl > now]
        if any(b.payload == item.payload for _, b in self._stashed):
            return
        if len(self._stashed) >= STASH_MAX:
            self._stashed.pop(0)
        self._stashed.append((gid, item))

    def _buffer(
        self, st: GroupState, src: NodeAddress, epoch: int, payload: bytes, received_at: float
    ) -> None:
        if any(b.payload == payload for b in st.buffered):
            return
        if len(st.buffered) >= BUFFER_MAX:
            st.buffered.pop(0)
        st.buffered.append(Buffered(src, epoch, payload, received_at))

    def _drain(self, st: GroupState, now: float) -> None:
        """Retry held messages that the group's epoch has reached (in epoch order)."""
        for _ in range(4):
            ready = sorted((b for b in st.buffered if b.epoch <= st.epoch), key=lambda b: b.epoch)
            if not ready:
                return
            st.buffered = [b for b in st.buffered if b.epoch > st.epoch]
            before = (st.epoch, st.tip)
            for b in ready:
                if st.group_id not in self._groups:
                    return
                try:
                    self._dispatch(b.src, b.payload, now, b.received_at)
                except Refused as exc:
                    self._out.events.append(PayloadRefused(exc.group_id, b.src, exc.reason))
                except MeshdError as exc:
                    self._out.events.append(PayloadRefused(st.group_id, b.src, str(exc)))
            if (st.epoch, st.tip) == before:
                return

    def _request_catchup(
        self, st: GroupState, peer: NodeAddress, from_epoch: int, *, now: float, force: bool = False
    ) -> None:
        last = st.catchup_at.get(peer)
        if not force and last is not None and now - last < self.config.catchup_retry_s:
            return
        st.catchup_at[peer] = now
        self._send(peer, CatchUpRequest(st.group_id, from_epoch).encode())

    def _sync(self, st: GroupState, peer: NodeAddress, *, now: float) -> None:
        """Exchange chains over the retained window with a peer on another branch."""
        last = st.catchup_at.get(peer)
        if last is not None and now - last < self.config.catchup_retry_s:
            return
        oldest = min(st.views)
        self._request_catchup(st, peer, oldest, now=now, force=True)
        self._push(st, peer, oldest)

    def _push(self, st: GroupState, peer: NodeAddress, from_epoch: int) -> None:
        entries = [st.log[e].envelope for e in sorted(st.log) if e >= from_epoch]
        entries = entries[: min(_CATCHUP_SERVED, MAX_CATCHUP_ENTRIES)]
        if entries:
            self._send(peer, CatchUpResponse(st.group_id, tuple(entries)).encode())

    def _next_view(
        self, gid: bytes, old: EpochView, action: Action, targets: Targets, tip: bytes
    ) -> EpochView:
        roles = dict(old.roles)
        for address, role in targets:
            if action is Action.REMOVE:
                roles.pop(address, None)
            elif action in (Action.ADD, Action.ROLE):
                roles[address] = role
        return EpochView(tip, roles, self._leaves(gid))

    def _report(self, st: GroupState, action: Action, targets: Targets, by: NodeAddress) -> None:
        gid, events = st.group_id, self._out.events
        self._out.changed.add(gid)
        for address, role in targets:
            if action is Action.ADD:
                events.append(MemberAdded(gid, address, role, by))
            elif action is Action.REMOVE:
                events.append(MemberRemoved(gid, address, by))
            elif action is Action.ROLE:
                events.append(RoleChanged(gid, address, role, by))
        events.append(EpochAdvanced(gid, st.epoch, st.tip))

    def _leaves(self, gid: bytes) -> dict[int, bytes]:
        return {m.leaf_index: m.node_key for m in self.engine.members(gid) if m.verified}

    def _send(self, dst: NodeAddress, payload: bytes) -> None:
        for part in fragment(payload, self.config.max_payload):
            self._out.sends.append((dst, part))

    def _take(self) -> Output:
        out, self._out = self._out, Output()
        return out
