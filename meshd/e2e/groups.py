"""Sans-IO group layer: MLS groups with meshd roles, fan-out, forks and catch-up.

``GroupManager`` drives one node's ``MlsEngine``. Every call takes ``now`` and returns an
``Output``: payloads to unicast through the mesh (one per member: fan-out of ONE MLS
ciphertext), events, and which groups' state must be persisted. The protocol (roles, fork
resolution, catch-up) is described in docs/groups.md; the incoming half is in
``meshd.e2e.groups_recv``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity
from meshd.crypto.mls.engine import CommitResult, MlsEngine
from meshd.e2e.group_wire import (
    TIP_LEN,
    Action,
    GroupCommit,
    GroupData,
    GroupWelcome,
    LeaveRequest,
    Role,
    message_id,
)
from meshd.e2e.groups_events import (
    GroupConfig,
    GroupCreated,
    GroupLeft,
    KeyPackageNeeded,
    Output,
)
from meshd.e2e.groups_recv import GroupReceiver
from meshd.e2e.groups_state import (
    GENESIS,
    EpochView,
    GroupState,
    LogEntry,
    PendingOp,
    Reassembler,
)
from meshd.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MeshdError,
    NotFound,
    PermissionDenied,
)

MAX_APP_ID = 255
Targets = tuple[tuple[NodeAddress, Role], ...]


def encode_app(app_id: str, content: bytes) -> bytes:
    """The plaintext sealed in a group application message: app id, then the content."""
    raw = app_id.encode()
    if not 1 <= len(raw) <= MAX_APP_ID:
        raise InvalidArgument(f"app id is 1..{MAX_APP_ID} bytes", field="app_id")
    return bytes([len(raw)]) + raw + content


class GroupManager(GroupReceiver):
    """One node's groups. Not thread-safe: one manager per node, one event loop."""

    def __init__(
        self,
        engine: MlsEngine,
        identity: Identity,
        *,
        config: GroupConfig | None = None,
        states: Iterable[GroupState] = (),
    ) -> None:
        self.engine = engine
        self.identity = identity
        self.key = identity.public.signing_key
        self.address = identity.address
        self.config = config or GroupConfig()
        self._groups: dict[bytes, GroupState] = {}
        self._out = Output()
        self._reassembler = Reassembler()
        self._stashed = []
        known = set(engine.groups())
        for st in states:
            if st.group_id in known and self._reconcile(st):
                self._groups[st.group_id] = st

    def _reconcile(self, st: GroupState) -> bool:
        """After a crash the MLS state (written first) may be ahead of ours: roll the engine
        back to our epoch; the commits in between come again through catch-up (our own
        never left: frames wait for the store commit that holds this state)."""
        epoch = self.engine.epoch(st.group_id)
        if epoch == st.epoch:
            return True
        if epoch > st.epoch:
            try:
                self.engine.rollback(st.group_id, st.epoch)
                return True
            except MeshdError:
                pass
        # Cannot line up (MLS state behind ours, or ours too old): keep the group out of
        # service rather than misreading rosters; it shows as orphaned until re-added.
        st.orphaned = True
        return True

    # -- reading ----------------------------------------------------------------------

    def groups(self) -> list[GroupState]:
        return [self._groups[g] for g in sorted(self._groups)]

    def state(self, group_id: bytes) -> GroupState:
        st = self._groups.get(group_id)
        if st is None:
            raise NotFound("no such group", field="group_id")
        return st

    def require_admin(self, group_id: bytes) -> None:
        """Raise unless this node may add/remove members now (before fetching key packages)."""
        self._admin_state(group_id)

    # -- local operations ---------------------------------------------------------------

    def create(
        self, name: str, *, now: float, group_id: bytes | None = None
    ) -> tuple[bytes, Output]:
        if len(name.encode()) > 255:
            raise InvalidArgument("a group name is at most 255 bytes", field="name")
        gid = self.engine.create_group(group_id)
        view = EpochView(GENESIS, {self.address: Role.ADMIN}, self._leaves(gid))
        st = GroupState(gid, name, 0, 0, {0: view}, updated_at=now)
        self._groups[gid] = st
        self._out.events.append(GroupCreated(gid, name))
        self._out.changed.add(gid)
        return gid, self._take()

    def invite(
        self, group_id: bytes, invitees: Sequence[tuple[bytes, Role]], *, now: float
    ) -> Output:
        """Add members from their key packages (with the role each gets) and welcome them."""
        st = self._admin_state(group_id)
        if not invitees:
            raise InvalidArgument("no key packages given", field="key_packages")
        targets = []
        for kp, role in invitees:
            member = self.engine.inspect_key_package(kp, now=now)
            if member.address in st.view.roles:
                raise AlreadyExists(f"{member.address} is already a member", field="key_packages")
            targets.append((member.address, Role(role)))
        if len({a for a, _ in targets}) != len(targets):
            raise InvalidArgument("a node is listed twice", field="key_packages")
        result = self.engine.add_members(group_id, [kp for kp, _ in invitees], now=now)
        env = self._commit_own(st, Action.ADD, tuple(targets), result, now=now)
        if result.welcome is not None:
            welcome = GroupWelcome(
                group_id,
                self.key,
                env.id,
                st.name,
                tuple(sorted(st.view.roles.items())),
                result.welcome,
            ).signed(self.identity)
            payload = welcome.encode()
            for address, _ in targets:
                self._send(address, payload)
        return self._take()

    def remove(self, group_id: bytes, members: Sequence[NodeAddress], *, now: float) -> Output:
        st = self._admin_state(group_id)
        if not members:
            raise InvalidArgument("no members given", field="members")
        for address in members:
            if address not in st.view.roles:
                raise NotFound(f"{address} is not a member of the group", field="members")
            if address == self.address:
                raise InvalidArgument("use leave to leave a group", field="members")
        targets = tuple((a, st.view.roles[a]) for a in sorted(set(members)))
        self._check_admins_left(st, {a: None for a, _ in targets})
        result = self.engine.remove_members(group_id, [a for a, _ in targets])
        self._commit_own(st, Action.REMOVE, targets, result, now=now)
        return self._take()

    def set_role(self, group_id: bytes, address: NodeAddress, role: Role, *, now: float) -> Output:
        """Change a member's role: an empty commit carrying the change, so roles are ordered
        with every other change of the group (and forks resolve them the same way)."""
        st = self._admin_state(group_id)
        if address not in st.view.roles:
            raise NotFound(f"{address} is not a member of the group", field="address")
        role = Role(role)
        if st.view.roles[address] is role:
            return self._take()
        self._check_admins_left(st, {address: role})
        result = self.engine.self_update(group_id)
        self._commit_own(st, Action.ROLE, ((address, role),), result, now=now)
        return self._take()

    def self_update(self, group_id: bytes, *, now: float) -> Output:
        st = self._member_state(group_id)
        result = self.engine.self_update(group_id)
        self._commit_own(st, Action.UPDATE, (), result, now=now)
        st.updated_at = now
        return self._take()

    def leave(self, group_id: bytes, *, now: float) -> Output:
        """Ask the admins to remove this node, then drop the group here."""
        st = self.state(group_id)
        others = [a for a in st.view.roles if a != self.address]
        admins = [a for a in st.view.admins() if a != self.address]
        if others and not admins:
            raise FailedPrecondition(
                "this node is the group's only admin: make another member admin first",
                field="group_id",
            )
        request = LeaveRequest(group_id, st.epoch, self.key).signed(self.identity).encode()
        for address in admins:
            self._send(address, request)
        self.engine.forget_group(group_id)
        del self._groups[group_id]
        self._out.events.append(GroupLeft(group_id))
        self._out.deleted.add(group_id)
        return self._take()

    def send(
        self, group_id: bytes, app_id: str, content: bytes, *, now: float
    ) -> tuple[bytes, Output]:
        """Seal ONE ciphertext and unicast it to every other member. Returns its message id."""
        st = self._member_state(group_id)
        ciphertext = self.engine.encrypt(group_id, encode_app(app_id, content))
        payload = GroupData(st.tip[:TIP_LEN], ciphertext).encode()
        for address in st.members():
            if address != self.address:
                self._send(address, payload)
        return message_id(ciphertext), self._take()

    def tick(self, *, now: float) -> Output:
        """Timers: retries of catch-up, re-proposals after forks, leave requests, updates."""
        for st in list(self._groups.values()):
            self._tick_group(st, now)
        return self._take()

    def receive(self, src: NodeAddress, payload: bytes, *, now: float) -> Output:
        """A group payload (kinds 0x20..0x2F) from ``src`` arrived through the mesh."""
        self._receive(src, payload, now=now)
        return self._take()

    # -- internals --------------------------------------------------------------------

    def _tick_group(self, st: GroupState, now: float) -> None:
        gid = st.group_id
        ttl = self.config.buffer_ttl_s
        kept = [b for b in st.buffered if b.received_at + ttl > now]
        st.buffered = kept
        ahead = [b for b in kept if b.epoch > st.epoch]
        if ahead:
            self._request_catchup(st, ahead[-1].src, st.epoch, now=now)
        if now < st.quiet_until or st.orphaned:
            return
        due = [p for p in st.pending if p.due <= now]
        if due:
            st.pending = [p for p in st.pending if p.due > now]
            self._out.changed.add(gid)
            for op in due:
                self._redo(st, op, now)
                if gid not in self._groups:
                    return
        if now - st.updated_at >= self.config.update_interval_s:
            self._merge(self.self_update(gid, now=now))

    def _redo(self, st: GroupState, op: PendingOp, now: float) -> None:
        """Commit again a change that is still relevant (lost in a fork, or a leave)."""
        gid, roles = st.group_id, st.view.roles
        admin = roles.get(self.address) is Role.ADMIN
        if op.action is Action.UPDATE:
            self._merge(self.self_update(gid, now=now))
        elif op.action is Action.ADD and admin:
            for address, role in op.targets:
                if address not in roles:
                    self._out.events.append(KeyPackageNeeded(gid, address, role))
        elif op.action is Action.REMOVE and admin:
            gone = [a for a, _ in op.targets if a in roles and a != self.address]
            if gone:
                self._merge(self.remove(gid, gone, now=now))
        elif op.action is Action.ROLE and admin:
            for address, role in op.targets:
                if address in roles and roles[address] is not role:
                    self._merge(self.set_role(gid, address, role, now=now))

    def _merge(self, out: Output) -> None:
        """Fold the output of a public method called from inside (timers) into ours."""
        self._out.sends.extend(out.sends)
        self._out.events.extend(out.events)
        self._out.changed |= out.changed
        self._out.deleted |= out.deleted

    def _commit_own(
        self, st: GroupState, action: Action, targets: Targets, result: CommitResult, *, now: float
    ) -> GroupCommit:
        old = st.view
        env = GroupCommit(action, self.key, old.tip, targets, result.commit).signed(self.identity)
        payload = env.encode()
        view = self._next_view(st.group_id, old, action, targets, env.id)
        st.advance(LogEntry(st.epoch, env.id, payload, True, action, targets), view)
        # Every member of the old epoch gets it (a removed one learns it is out).
        for address in sorted(old.roles):
            if address != self.address:
                self._send(address, payload)
        self._report(st, action, targets, self.address)
        return env

    def _member_state(self, group_id: bytes) -> GroupState:
        st = self.state(group_id)
        if st.orphaned:
            raise FailedPrecondition(
                "the group's branch lost a fork; waiting to be re-added", field="group_id"
            )
        return st

    def _admin_state(self, group_id: bytes) -> GroupState:
        st = self._member_state(group_id)
        if st.view.roles.get(self.address) is not Role.ADMIN:
            raise PermissionDenied("only admins may do this", field="group_id")
        return st

    def _check_admins_left(self, st: GroupState, changes: dict[NodeAddress, Role | None]) -> None:
        roles = dict(st.view.roles)
        for address, role in changes.items():
            if role is None:
                roles.pop(address, None)
            else:
                roles[address] = role
        if roles and Role.ADMIN not in roles.values():
            raise FailedPrecondition("the group would have no admin left", field="role")
