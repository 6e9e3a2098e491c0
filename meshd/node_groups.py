"""The node's group half: MLS groups, rosters and roles, fan-out, commits, catch-up.

``meshd.node.Node`` inherits this mixin; the node calls the ``_groups_*`` hooks from its
lifecycle. Payload kinds 0x20..0x2F (``meshd.e2e.kinds``) land here. The protocol is the
sans-IO ``meshd.e2e.groups.GroupManager`` (docs/groups.md); this module carries out its
output (mesh sends, persistence, history and events) and runs its timer.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity
from meshd.crypto.mls.engine import MlsEngine
from meshd.e2e.group_wire import Role
from meshd.e2e.groups import GroupManager
from meshd.e2e.groups_events import (
    EpochAdvanced,
    ForkResolved,
    GroupConfig,
    GroupCreated,
    GroupEvent,
    GroupJoined,
    GroupLeft,
    GroupMessage,
    GroupRemoved,
    KeyPackageNeeded,
    MemberAdded,
    MemberRemoved,
    Output,
    PayloadRefused,
    RoleChanged,
)
from meshd.envelope import validate_app_id
from meshd.errors import InvalidArgument, MeshdError, Unavailable
from meshd.node_api import AppEventKind, Caller, MessageRecord
from meshd.router.core import CoreConfig
from meshd.router.events import DeliveryState, DeliveryStateChanged, MessageReceived
from meshd.router.types import OutboxEntry
from meshd.store import Store
from meshd.store.groups import GroupCarrier, GroupMessageRow, GroupTables

if TYPE_CHECKING:
    from meshd.router.core import MeshCore

GROUP_TICK_S = 5.0
KEY_PACKAGE_TIMEOUT_S = 30.0
MAX_GROUP_MESSAGE = 16 * 1024


@dataclass(frozen=True, slots=True)
class GroupInfo:
    group_id: bytes
    name: str
    epoch: int
    members: int
    role: Role
    admins: tuple[NodeAddress, ...]


@dataclass(frozen=True, slots=True)
class GroupMemberInfo:
    address: NodeAddress
    role: Role


class GroupMessages:
    """Mixin for ``Node``: MLS groups."""

    log: Any
    identity: Identity
    store: Store
    _loop: asyncio.AbstractEventLoop | None

    if TYPE_CHECKING:

        @property
        def core(self) -> MeshCore: ...

        @property
        def mls(self) -> MlsEngine: ...

        def _now(self) -> float: ...

        def _schedule_pump(self) -> None: ...

        async def _durable(self) -> None: ...

        def _authorize(self, caller: Caller) -> str: ...

        async def key_package_for(self, address: NodeAddress, *, timeout: float) -> bytes: ...  # noqa: ASYNC109

    _gm: GroupManager | None = None
    _gm_tables: GroupTables | None = None
    _gm_timer: asyncio.TimerHandle | None = None
    group_config: GroupConfig | None = None
    # Payloads in the core's outbox: carrier id -> the group message it carries (DATA) or
    # None (commits, Welcomes, control). Kept in group_outbox until their outcome.
    _gm_carriers: dict[bytes, bytes | None] | None = None
    _gm_prune = False  # a carrier finished: drop unreferenced payloads at the next tick

    @property
    def groups_manager(self) -> GroupManager:
        if self._gm is None:
            raise Unavailable("the node is not started")
        return self._gm

    def _groups_start(self, now: float) -> None:
        """Called by ``Node.start`` once the core and the MLS engine exist."""
        tables = self._gm_tables = GroupTables(self.store)
        states, bad = tables.states()
        for line in bad:  # left in the database for the operator
            self.log.error("group_state_unreadable", detail=line)
        self._gm = GroupManager(self.mls, self.identity, config=self.group_config, states=states)
        self._gm_tasks: set[asyncio.Task[None]] = set()
        self._groups_restore(tables, now)
        assert self._loop is not None
        self._gm_timer = self._loop.call_later(GROUP_TICK_S, self._groups_tick)

    def _groups_stop(self) -> None:
        """Called by ``Node.stop`` before the store closes."""
        if self._gm_timer is not None:
            self._gm_timer.cancel()
            self._gm_timer = None
        for task in getattr(self, "_gm_tasks", ()):
            task.cancel()
        self._gm = None

    def _groups_tick(self) -> None:
        assert self._loop is not None
        if self._gm is None:
            return
        try:
            self._groups_apply(self._gm.tick(now=time.time()), time.time())
            if self._gm_prune and self._gm_tables is not None:
                self._gm_prune = False
                self._gm_tables.prune_payloads()
        except MeshdError as exc:
            self.log.error("group_tick_failed", error=str(exc))
        self._gm_timer = self._loop.call_later(GROUP_TICK_S, self._groups_tick)

    def _group_payload(self, event: MessageReceived, wall: float) -> None:
        if self._gm is None:
            return
        try:
            out = self._gm.receive(event.src, event.payload, now=wall)
        except Exception:  # the layer refuses bad input itself; a bug must not stop the pump
            self.log.exception("group_payload_failed", peer=event.src.short)
            return
        self._groups_apply(out, wall)

    # --- durable sends ----------------------------------------------------------------
    def _groups_restore(self, tables: GroupTables, now: float) -> None:
        """Hand the core every group payload whose outcome was not recorded (a crash or
        stop with copies in flight); ``now`` is the core's clock."""
        carriers, bad = tables.carriers()
        for line in bad:  # left in the database for the operator
            self.log.error("group_carrier_unreadable", detail=line)
        self._gm_carriers = {c.carrier_id: c.message_id for c in carriers}
        offset = now - time.time()  # unix -> the core's monotonic clock
        entries = [OutboxEntry(c.carrier_id, c.dst, c.payload, c.created_at + offset,
                               c.expires_at + offset, c.state, 0)
                   for c in carriers]  # fmt: skip
        if entries:
            self.core.restore(entries, now=now)
            self.log.info("group_outbox_restored", payloads=len(entries))

    def _groups_delivery(self, event: DeliveryStateChanged, wall: float) -> bool:
        """The core's state for a group payload (True: it was one; nothing else to do)."""
        carriers = self._gm_carriers
        if not carriers or event.message_id not in carriers:
            return False
        tables = self._gm_tables
        if tables is None:
            return True
        if event.state is DeliveryState.HELD_BY_CUSTODIAN:
            tables.carrier_state(event.message_id, event.state)
        if not event.state.is_final:
            return True
        mid = carriers.pop(event.message_id)
        tables.carrier_done(event.message_id)
        self._gm_prune = True
        if mid is None:
            return True
        tally = tables.tally(mid, delivered=event.state is DeliveryState.DELIVERED)
        if tally is not None and tally.done:
            if tally.failed:
                reason = f"{tally.failed} of {tally.copies} copies not delivered"
                self.store.set_outgoing_state(mid, DeliveryState.FAILED, reason, at=wall)
            else:
                self.store.set_outgoing_state(mid, DeliveryState.DELIVERED, None, at=wall)
        return True

    # --- carrying out the manager's output -------------------------------------------
    def _groups_apply(self, out: Output, wall: float, *, message_id: bytes | None = None) -> int:
        """Send, persist, record; returns how many payloads the core took."""
        gm = self.groups_manager
        now = self._now()
        cfg: CoreConfig | None = getattr(self, "_core_config", None)
        expires = wall + (cfg or CoreConfig()).message_lifetime
        carriers: list[GroupCarrier] = []
        for dst, payload in out.sends:
            try:
                cid = self.core.send(dst, payload, now=now)
            except MeshdError as exc:
                self.log.warning("group_send_failed", peer=dst.short, error=str(exc))
                continue
            carriers.append(GroupCarrier(cid, dst, payload, message_id, wall, expires,
                                         DeliveryState.QUEUED))  # fmt: skip
        tables = self._gm_tables
        assert tables is not None
        if carriers:
            # Same transaction as the state below; the frames leave after its commit.
            tables.add_carriers(carriers)
            if self._gm_carriers is not None:
                self._gm_carriers.update((c.carrier_id, message_id) for c in carriers)
        for gid in out.deleted:
            tables.delete(gid)
        for gid in out.changed - out.deleted:
            try:
                tables.save(gm.state(gid), now=wall)
            except MeshdError:
                tables.delete(gid)  # gone meanwhile (removed by a later commit)
        for ev in out.events:
            self._group_event(ev, wall)
        self._schedule_pump()
        return len(carriers)

    def _group_event(self, ev: GroupEvent, wall: float) -> None:
        store = self.store
        if isinstance(ev, GroupMessage):
            try:
                app_id = validate_app_id(ev.app_id)
            except MeshdError:
                self.log.warning("group_message_bad_app", peer=ev.sender.short)
                return
            # hops=None: a group message may come by catch-up or be replayed after a
            # Welcome, so the carrying frame's hop count says nothing reliable about it.
            record = store.add_incoming(
                message_id=ev.message_id, app_id=app_id, src=ev.sender,
                content=ev.content, received_at=wall, hops=None,
            )  # fmt: skip
            if record is not None:
                store.set_group_id(ev.sender, ev.message_id, ev.group_id)
                assert self._gm_tables is not None
                self._gm_tables.add_message(
                    GroupMessageRow(ev.sender, ev.message_id, ev.group_id, app_id, wall)
                )
            return
        detail = f"group={ev.group_id.hex()}" if ev.group_id is not None else ""
        append = store.append_event
        if isinstance(ev, GroupCreated):
            append(None, AppEventKind.GROUP_CREATED, wall, detail=f"{detail} name={ev.name}")
        elif isinstance(ev, GroupJoined):
            info = f"{detail} name={ev.name} epoch={ev.epoch}"
            append(None, AppEventKind.GROUP_JOINED, wall, peer=ev.inviter, detail=info)
        elif isinstance(ev, MemberAdded):
            info = f"{detail} role={ev.role.name.lower()} by={ev.by.text}"
            append(None, AppEventKind.GROUP_MEMBER_ADDED, wall, peer=ev.address, detail=info)
        elif isinstance(ev, MemberRemoved):
            info = f"{detail} by={ev.by.text}"
            append(None, AppEventKind.GROUP_MEMBER_REMOVED, wall, peer=ev.address, detail=info)
        elif isinstance(ev, RoleChanged):
            info = f"{detail} role={ev.role.name.lower()} by={ev.by.text}"
            append(None, AppEventKind.GROUP_ROLE_CHANGED, wall, peer=ev.address, detail=info)
        elif isinstance(ev, GroupLeft):
            append(None, AppEventKind.GROUP_LEFT, wall, detail=detail)
        elif isinstance(ev, GroupRemoved):
            append(None, AppEventKind.GROUP_REMOVED, wall, peer=ev.by, detail=detail)
        elif isinstance(ev, KeyPackageNeeded):
            self._group_background(self._group_readd(ev))
        elif isinstance(ev, PayloadRefused):
            self.log.warning("group_payload_refused", peer=ev.src.short, reason=ev.reason)
        elif isinstance(ev, ForkResolved):
            self.log.info("group_fork_resolved", group=ev.group_id.hex(), epoch=ev.fork_epoch,
                          dropped=ev.dropped, reproposed=ev.reproposed)  # fmt: skip
        elif isinstance(ev, EpochAdvanced):
            self.log.debug("group_epoch", group=ev.group_id.hex(), epoch=ev.epoch)

    def _group_background(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._gm_tasks.add(task)
        task.add_done_callback(self._gm_tasks.discard)

    async def _group_readd(self, ev: KeyPackageNeeded) -> None:
        """Invite again a member whose Add was lost in a fork (fresh key package)."""
        try:
            kp = await self.key_package_for(ev.address, timeout=KEY_PACKAGE_TIMEOUT_S)
            out = self.groups_manager.invite(ev.group_id, [(kp, ev.role)], now=time.time())
            self._groups_apply(out, time.time())
        except MeshdError as exc:
            self.log.warning("group_readd_failed", peer=ev.address.short, error=str(exc))

    # --- GroupsApi ---------------------------------------------------------------------
    async def _group_done(self, out: Output) -> None:
        if self._groups_apply(out, time.time()):
            self.store.durable_pending = True  # fsync'd before the caller is answered
        await self._durable()

    def _group_info(self, gid: bytes) -> GroupInfo:
        st = self.groups_manager.state(gid)
        roles = st.view.roles
        return GroupInfo(gid, st.name, st.epoch, len(roles),
                         roles.get(self.identity.address, Role.MEMBER),
                         tuple(st.view.admins()))  # fmt: skip

    async def create_group(self, caller: Caller, name: str) -> GroupInfo:
        self._authorize(caller)
        gid, out = self.groups_manager.create(name, now=time.time())
        await self._group_done(out)
        return self._group_info(gid)

    async def invite_to_group(
        self, caller: Caller, group_id: bytes, members: list[NodeAddress], role: Role
    ) -> GroupInfo:
        """Fetch each invitee's key package (cached or through the mesh), then Add them."""
        self._authorize(caller)
        if not members:
            raise InvalidArgument("no members given", field="members")
        self.groups_manager.require_admin(group_id)
        kps = await asyncio.gather(
            *(self.key_package_for(a, timeout=KEY_PACKAGE_TIMEOUT_S) for a in members)
        )
        out = self.groups_manager.invite(group_id, [(kp, role) for kp in kps], now=time.time())
        await self._group_done(out)
        return self._group_info(group_id)

    async def remove_from_group(
        self, caller: Caller, group_id: bytes, members: list[NodeAddress]
    ) -> GroupInfo:
        self._authorize(caller)
        await self._group_done(self.groups_manager.remove(group_id, members, now=time.time()))
        return self._group_info(group_id)

    async def set_group_role(
        self, caller: Caller, group_id: bytes, member: NodeAddress, role: Role
    ) -> GroupInfo:
        self._authorize(caller)
        out = self.groups_manager.set_role(group_id, member, role, now=time.time())
        await self._group_done(out)
        return self._group_info(group_id)

    async def leave_group(self, caller: Caller, group_id: bytes) -> None:
        self._authorize(caller)
        await self._group_done(self.groups_manager.leave(group_id, now=time.time()))

    def list_groups(self, caller: Caller) -> list[GroupInfo]:
        self._authorize(caller)
        return [self._group_info(st.group_id) for st in self.groups_manager.groups()]

    def group_members(self, caller: Caller, group_id: bytes) -> list[GroupMemberInfo]:
        self._authorize(caller)
        roles = self.groups_manager.state(group_id).view.roles
        return [GroupMemberInfo(a, roles[a]) for a in sorted(roles)]

    async def send_group_message(self, caller: Caller, group_id: bytes, content: bytes) -> bytes:
        """Seal once, unicast to every member; returns the message id members will see
        once the copies are on disk (they survive a crash: ``_groups_restore``)."""
        record = await self.send_group_message_record(caller, group_id, content)
        return record.message_id

    async def send_group_message_record(
        self, caller: Caller, group_id: bytes, content: bytes
    ) -> MessageRecord:
        """``send_group_message`` returning the sender's history record."""
        app_id = self._authorize(caller)
        if len(content) > MAX_GROUP_MESSAGE:
            raise InvalidArgument(f"at most {MAX_GROUP_MESSAGE} bytes", field="content")
        wall = time.time()
        mid, out = self.groups_manager.send(group_id, app_id, content, now=wall)
        copies = self._groups_apply(out, wall, message_id=mid)
        assert self._gm_tables is not None
        self._gm_tables.add_sent(mid, self.identity.address, group_id, app_id, copies, now=wall)
        record = self.store.add_group_outgoing(
            message_id=mid, app_id=app_id, group_id=group_id, sender=self.identity.address,
            content=bytes(content), created_at=wall,
        )  # fmt: skip
        if copies == 0:  # alone in the group: nobody to deliver to
            self.store.set_outgoing_state(mid, DeliveryState.DELIVERED, None, at=wall)
        await self._durable()
        return record

    def group_history(
        self, caller: Caller, group_id: bytes, *, limit: int
    ) -> list[GroupMessageRow]:
        app_id = self._authorize(caller)
        if not 1 <= limit <= 1000:
            raise InvalidArgument("limit must be 1..1000", field="limit")
        assert self._gm_tables is not None
        return self._gm_tables.messages(group_id, app_id, limit=limit)
