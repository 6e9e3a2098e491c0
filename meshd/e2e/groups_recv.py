"""The incoming half of the group layer: commits (with authorization and fork resolution),
application messages, Welcomes, catch-up and leave requests. See docs/groups.md."""

from __future__ import annotations

from meshd.address import NodeAddress
from meshd.crypto.mls import wire
from meshd.crypto.mls.credential import parse_identity
from meshd.crypto.mls.engine import ApplicationMessage
from meshd.e2e.group_wire import (
    KIND_CATCHUP_REQUEST,
    KIND_CATCHUP_RESPONSE,
    KIND_COMMIT,
    KIND_DATA,
    KIND_FRAGMENT,
    KIND_LEAVE,
    KIND_WELCOME,
    TIP_LEN,
    Action,
    CatchUpRequest,
    CatchUpResponse,
    Fragment,
    GroupCommit,
    GroupData,
    GroupWelcome,
    LeaveRequest,
    Role,
    kind_of,
    message_id,
)
from meshd.e2e.groups_base import GroupBase, Refused
from meshd.e2e.groups_events import (
    ForkResolved,
    GroupJoined,
    GroupMessage,
    GroupRemoved,
    PayloadRefused,
)
from meshd.e2e.groups_state import (
    Buffered,
    EpochView,
    GroupState,
    LogEntry,
    PendingOp,
)
from meshd.errors import (
    CryptoError,
    EpochAheadError,
    FrameDecodeError,
    InvalidArgument,
    MeshdError,
    NotFound,
)


class GroupReceiver(GroupBase):
    """Base of ``GroupManager``: what arrives from other members."""

    # -- dispatch ---------------------------------------------------------------------

    def _receive(self, src: NodeAddress, payload: bytes, *, now: float) -> None:
        try:
            if kind_of(payload) == KIND_FRAGMENT:
                whole = self._reassembler.add(src, Fragment.decode(payload), now=now)
                if whole is None:
                    return
                if kind_of(whole) == KIND_FRAGMENT:
                    raise FrameDecodeError("a fragment inside a fragment", field="kind")
                payload = whole
            self._dispatch(src, payload, now, now)
        except Refused as exc:
            self._out.events.append(PayloadRefused(exc.group_id, src, exc.reason))
        except MeshdError as exc:  # decode errors (FrameDecodeError/WireError) and the like
            self._out.events.append(PayloadRefused(None, src, str(exc)))

    def _dispatch(self, src: NodeAddress, payload: bytes, now: float, received_at: float) -> None:
        kind = kind_of(payload)
        if kind == KIND_DATA:
            self._on_data(src, payload, now, received_at)
        elif kind == KIND_COMMIT:
            self._on_commit(src, payload, now, received_at)
        elif kind == KIND_WELCOME:
            self._on_welcome(src, payload, now)
        elif kind == KIND_CATCHUP_REQUEST:
            self._on_catchup_request(src, payload, now)
        elif kind == KIND_CATCHUP_RESPONSE:
            self._on_catchup_response(src, payload, now)
        elif kind == KIND_LEAVE:
            self._on_leave(src, payload, now)
        else:
            raise FrameDecodeError(f"unknown group payload kind 0x{kind:02x}", field="kind")

    # -- application messages ---------------------------------------------------------

    def _on_data(self, src: NodeAddress, payload: bytes, now: float, received_at: float) -> None:
        data = GroupData.decode(payload)
        info = self.engine.peek(data.mls)
        if info.wire_format != wire.WIRE_PRIVATE_MESSAGE or info.group_id is None:
            raise Refused("group data is not an MLS PrivateMessage")
        gid, epoch = info.group_id, info.epoch or 0
        st = self._groups.get(gid)
        if st is None:
            # Not a member (yet): the Welcome may still be on its way (the mesh does not
            # keep order); held briefly, then dropped.
            self._stash(gid, Buffered(src, epoch, payload, received_at), now)
            return
        if st.orphaned or epoch > st.epoch:
            self._buffer(st, src, epoch, payload, received_at)
            self._request_catchup(st, src, st.epoch, now=now)
            return
        view = st.views.get(epoch)
        if view is not None and view.tip[:TIP_LEN] != data.tip:
            # Same epoch number, another history: a fork. Keep the message for when we
            # switch branches, and compare chains with the sender.
            self._buffer(st, src, epoch, payload, received_at)
            self._sync(st, src, now=now)
            return
        try:
            result = self.engine.process(data.mls)
        except EpochAheadError:
            self._buffer(st, src, epoch, payload, received_at)
            return
        except CryptoError as exc:
            raise Refused(f"undecryptable group message: {exc}", gid) from exc
        if not isinstance(result, ApplicationMessage):
            raise Refused("group data carried a commit", gid)
        body = result.plaintext
        if not body or len(body) < 1 + body[0] or body[0] == 0:
            raise Refused("group message lacks its app id", gid)
        try:
            app_id = body[1 : 1 + body[0]].decode()
        except UnicodeDecodeError:
            raise Refused("group message app id is not UTF-8", gid) from None
        self._out.events.append(
            GroupMessage(
                gid,
                result.sender.address,
                app_id,
                body[1 + body[0] :],
                result.epoch,
                message_id(data.mls),
            )
        )

    # -- commits ----------------------------------------------------------------------

    def _on_commit(self, src: NodeAddress, payload: bytes, now: float, received_at: float) -> None:
        env = GroupCommit.decode(payload)
        info = self.engine.peek(env.commit)
        if (
            info.wire_format != wire.WIRE_PUBLIC_MESSAGE
            or info.content_type != wire.CONTENT_COMMIT
            or info.group_id is None
            or info.epoch is None
            or info.sender_leaf is None
        ):
            raise Refused("not an MLS commit from a member")
        gid, epoch = info.group_id, info.epoch
        st = self._groups.get(gid)
        if st is None:
            self._stash(gid, Buffered(src, epoch, payload, received_at), now)
            return
        entry = st.log.get(epoch)
        if entry is not None and entry.commit_id == env.id:
            return  # already applied (duplicate or replayed catch-up)
        if st.orphaned:
            return
        if epoch > st.epoch:
            self._buffer(st, src, epoch, payload, received_at)
            self._request_catchup(st, src, st.epoch, now=now)
            return
        view = st.views.get(epoch)
        if view is None:
            self._older_than_join(st, env, epoch, now)
            return
        if env.parent != view.tip:
            # The committer's history differs before this epoch: compare whole chains.
            self._sync(st, src, now=now)
            return
        self._authorize(st, view, env, info.sender_leaf)
        if epoch == st.epoch:
            self._apply(st, env, payload, epoch, now)
            return
        ours = st.log[epoch]
        if env.id < ours.commit_id:
            self._switch(st, env, payload, epoch, src, now)
        else:
            # We hold the winner: show it to the sender so that its side switches too (at
            # most once per retry period: a side that cannot switch must not ping-pong).
            last = st.pushed_at.get(src)
            if last is None or now - last >= self.config.catchup_retry_s:
                st.pushed_at[src] = now
                self._push(st, src, epoch)

    def _authorize(self, st: GroupState, view: EpochView, env: GroupCommit, leaf: int) -> None:
        gid = st.group_id
        if view.leaves.get(leaf) != env.committer_key:
            raise Refused("the signer does not hold the commit's sender leaf", gid)
        if not env.verify():
            raise Refused("bad signature on the group commit", gid)
        committer = NodeAddress.from_public_key(env.committer_key)
        role = view.roles.get(committer)
        if role is None:
            raise Refused("the committer is not a member", gid)
        if env.action is not Action.UPDATE and role is not Role.ADMIN:
            raise Refused(f"only admins may {env.action.name.lower()} (forged by a member)", gid)
        addresses = [a for a, _ in env.targets]
        if len(set(addresses)) != len(addresses):
            raise Refused("a target is listed twice", gid)
        if env.action is Action.UPDATE and env.targets:
            raise Refused("an update names no targets", gid)
        if env.action is not Action.UPDATE and not env.targets:
            raise Refused("no targets", gid)
        for address in addresses:
            member = address in view.roles
            if member == (env.action is Action.ADD):
                raise Refused(f"target {address.short} has the wrong membership", gid)
        if env.action is Action.REMOVE and committer in addresses:
            raise Refused("a commit cannot remove its committer", gid)
        if self._proposal_effect(env.commit, view) != _expected(env):
            raise Refused("the commit's proposals are not the declared change", gid)
        roles = dict(view.roles)
        for address, r in env.targets:
            if env.action is Action.REMOVE:
                del roles[address]
            else:
                roles[address] = r
        if roles and Role.ADMIN not in roles.values():
            raise Refused("the commit would leave no admin", gid)

    def _proposal_effect(
        self, commit: bytes, view: EpochView
    ) -> tuple[set[NodeAddress], set[NodeAddress]]:
        """(added, removed) by a commit, read from its proposals before it is applied.

        Commits travel as PublicMessages, so our RFC 9420 codec can read the proposals the
        binding hides (§12.4): Add names the joiner's endorsed key package, Remove a leaf.
        Anything else (by reference, PSK, ReInit, ...) is refused: meshd never sends it.
        """
        try:
            msg = wire.MLS_MESSAGE.parse(commit, "commit")
            proposals = msg["body"]["content"]["body"]["proposals"]
        except MeshdError as exc:
            raise Refused(f"unreadable commit: {exc}") from exc
        added: set[NodeAddress] = set()
        removed: set[NodeAddress] = set()
        for item in proposals:
            if item["type"] != 1:
                raise Refused("a commit with a proposal by reference")
            kind, body = item["body"]["proposal_type"], item["body"]["body"]
            if kind == 1:
                leaf = body["key_package"]["leaf_node"]
                try:
                    identity = wire.basic_identity(leaf, "commit")
                except MeshdError as exc:
                    raise Refused(f"an Add without a meshd credential: {exc}") from exc
                node_key = parse_identity(identity, leaf["signature_key"])
                if node_key is None:
                    raise Refused("an Add whose key package no node endorsed")
                added.add(NodeAddress.from_public_key(node_key))
            elif kind == 3:
                owner = view.leaves.get(body["removed"])
                if owner is None:
                    raise Refused("a Remove of an unknown leaf")
                removed.add(NodeAddress.from_public_key(owner))
            else:
                raise Refused(f"a commit with a proposal of type {kind}")
        return added, removed

    def _apply(
        self, st: GroupState, env: GroupCommit, payload: bytes, epoch: int, now: float
    ) -> None:
        gid, before = st.group_id, set(st.view.roles)
        committer = NodeAddress.from_public_key(env.committer_key)
        try:
            result = self.engine.process(env.commit)
        except CryptoError as exc:
            raise Refused(f"commit refused by MLS: {exc}", gid) from exc
        if isinstance(result, ApplicationMessage):
            raise Refused("a commit envelope carried an application message", gid)
        if result.removed:
            del self._groups[gid]
            self._out.deleted.add(gid)
            self._out.events.append(GroupRemoved(gid, committer))
            return
        after = {m.address for m in result.members if m.verified}
        declared = {a for a, _ in env.targets}
        expected = (
            (declared, set())
            if env.action is Action.ADD
            else (set(), declared)
            if env.action is Action.REMOVE
            else (set(), set())
        )
        honest = (after - before, before - after) == expected and (
            result.committer is not None and result.committer.node_key == env.committer_key
        )
        if not honest:
            # Checked before applying too; this second look is at what mls-rs did.
            try:
                self.engine.rollback(gid, epoch)
            except MeshdError:
                st.orphaned = True  # MLS and meshd no longer agree: out of service
                self._out.changed.add(gid)
            raise Refused("the commit's roster change is not the declared one", gid)
        view = self._next_view(gid, st.view, env.action, env.targets, env.id)
        st.advance(LogEntry(epoch, env.id, payload, False, env.action, env.targets), view)
        self._report(st, env.action, env.targets, committer)
        self._drain(st, now)

    def _switch(
        self,
        st: GroupState,
        env: GroupCommit,
        payload: bytes,
        epoch: int,
        src: NodeAddress,
        now: float,
    ) -> None:
        """Our branch lost at ``epoch``: roll back to it, apply the winner, fetch the rest."""
        gid = st.group_id
        try:
            self.engine.rollback(gid, epoch)
        except (NotFound, InvalidArgument) as exc:
            raise Refused(f"fork at epoch {epoch} is too old to resolve: {exc}", gid) from exc
        dropped = st.truncate(epoch)
        mine = [d for d in dropped if d.mine]
        st.pending.extend(PendingOp(d.action, d.targets, now) for d in mine)
        st.quiet_until = now + self.config.fork_settle_s
        self._out.changed.add(gid)
        self._out.events.append(ForkResolved(gid, epoch, len(dropped), len(mine)))
        self._apply(st, env, payload, epoch, now)
        if gid in self._groups:
            self._request_catchup(st, src, epoch + 1, now=now, force=True)

    def _older_than_join(self, st: GroupState, env: GroupCommit, epoch: int, now: float) -> None:
        """A commit from before we joined. If it beats the commit that added us, the Add we
        came in with lost a fork: wait to be re-added (the admin re-proposes the Add)."""
        if epoch != st.joined_epoch - 1 or not env.verify():
            return
        committer = NodeAddress.from_public_key(env.committer_key)
        if st.view.roles.get(committer) is not Role.ADMIN:
            return
        if env.id < st.views[st.joined_epoch].tip:
            st.orphaned = True
            st.quiet_until = now + self.config.fork_settle_s
            self._out.changed.add(st.group_id)
            self._out.events.append(ForkResolved(st.group_id, epoch, 0, 0))

    # -- welcome, catch-up, leave -------------------------------------------------------

    def _on_welcome(self, src: NodeAddress, payload: bytes, now: float) -> None:
        w = GroupWelcome.decode(payload)
        if not w.verify():
            raise Refused("bad signature on the welcome")
        inviter = NodeAddress.from_public_key(w.inviter_key)
        gid = self._replaceable_group(w, inviter)
        if gid is not None:
            # An admin re-added us (our Add lost a fork): the new Welcome replaces the old.
            self.engine.forget_group(gid)
            del self._groups[gid]
        try:
            joined = self.engine.join_group(w.welcome, now=now)
        except MeshdError as exc:
            raise Refused(f"cannot join: {exc}") from exc
        gid = joined.group_id
        if gid != w.group_id:
            self.engine.forget_group(gid)
            raise Refused("the welcome's group id does not match its envelope", gid)
        roster = {m.address for m in joined.members if m.verified}
        claimed = dict(w.roles)
        roles = {a: claimed.get(a, Role.MEMBER) for a in roster}
        if inviter not in roster or roles.get(inviter) is not Role.ADMIN:
            self.engine.forget_group(gid)
            raise Refused("the welcome is not from an admin of the group", gid)
        leaves = {m.leaf_index: m.node_key for m in joined.members if m.verified}
        view = EpochView(w.tip, roles, leaves)
        st = GroupState(gid, w.name, joined.epoch, joined.epoch, {joined.epoch: view})
        st.updated_at = now
        self._groups[gid] = st
        self._out.changed.add(gid)
        self._out.events.append(GroupJoined(gid, w.name, inviter, joined.epoch))
        st.buffered = [b for g, b in self._stashed if g == gid]
        self._stashed = [(g, b) for g, b in self._stashed if g != gid]
        self._drain(st, now)

    def _replaceable_group(self, w: GroupWelcome, inviter: NodeAddress) -> bytes | None:
        """The group a Welcome re-adds us to, if we may replace our copy: signed by an admin
        of our copy and made by a commit we do not know (a replay of the Welcome we joined
        with carries a tip we know)."""
        st = self._groups.get(w.group_id)
        if st is None or st.view.roles.get(inviter) is not Role.ADMIN:
            return None
        known = {v.tip for v in st.views.values()} | {e.commit_id for e in st.log.values()}
        return None if w.tip in known else w.group_id

    def _on_catchup_request(self, src: NodeAddress, payload: bytes, now: float) -> None:
        req = CatchUpRequest.decode(payload)
        st = self._groups.get(req.group_id)
        if st is None or not any(src in v.roles for v in st.views.values()):
            return  # only members (of some retained epoch) are served
        self._push(st, src, req.from_epoch)

    def _on_catchup_response(self, src: NodeAddress, payload: bytes, now: float) -> None:
        resp = CatchUpResponse.decode(payload)
        for commit in resp.commits:
            if kind_of(commit) != KIND_COMMIT:
                raise Refused("a catch-up entry is not a commit", resp.group_id)
            try:
                self._on_commit(src, commit, now, now)
            except Refused as exc:
                self._out.events.append(PayloadRefused(resp.group_id, src, exc.reason))
                return

    def _on_leave(self, src: NodeAddress, payload: bytes, now: float) -> None:
        req = LeaveRequest.decode(payload)
        st = self._groups.get(req.group_id)
        if st is None:
            return
        leaver = NodeAddress.from_public_key(req.member_key)
        if leaver not in st.view.roles or not req.verify():
            raise Refused("leave request from a non-member or badly signed", req.group_id)
        admins = [a for a in st.view.admins() if a != leaver]
        if self.address not in admins:
            return
        due = now + admins.index(self.address) * self.config.leave_stagger_s
        st.pending.append(PendingOp(Action.REMOVE, ((leaver, st.view.roles[leaver]),), due))
        self._out.changed.add(st.group_id)


def _expected(env: GroupCommit) -> tuple[set[NodeAddress], set[NodeAddress]]:
    """(added, removed) that a commit declaring ``env.action`` may make."""
    declared = {a for a, _ in env.targets}
    if env.action is Action.ADD:
        return declared, set()
    if env.action is Action.REMOVE:
        return set(), declared
    return set(), set()
