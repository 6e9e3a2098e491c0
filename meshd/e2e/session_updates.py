"""Periodic self-updates of 1:1 sessions (post-compromise security), sans-IO.

Each end of a confirmed session commits a self-update (a fresh leaf key and update path,
RFC 9420 §12.4) every ``update_interval`` seconds, stretched by up to 10 % per end and
group (a hash of both, so the two ends rarely commit at the same moment). The commit goes
out on its own (SESSION_COMMIT without a message) and rides along with every message
sealed in the new epoch until the peer proves it is there (an application message of the
peer opened in the new epoch), so a lost or reordered commit frame costs nothing. The
receiver answers an applied commit with such a proof (an empty control record). Messages
sealed in the old epoch still open after the change: mls-rs keeps past epochs' secrets
(``meshd.crypto.mls.storage.EPOCHS_KEPT``).

Both ends updating at once fork the group at epoch n. The rule is the group layer's
(docs/groups.md): the commit with the lower SHA-256 wins. The loser rolls back to n,
applies the winner, re-seals under new carrier ids what it sealed on its losing branch
(the receiver delivers a message id once) and updates again at its next tick; the winner
ignores the losing commit, sends its own again (at most every RESET_INTERVAL_S) and drops
the loser's branch messages without a warning.

Per-group state (our unconfirmed commit, the time of our last update) is kept in the
``e2e_settings`` table under ``update:<group id hex>`` (no schema migration needed).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from meshd.address import NodeAddress
from meshd.crypto import tofu
from meshd.crypto.identity import Identity
from meshd.crypto.mls import wire as mls_wire
from meshd.crypto.mls.engine import EpochChanged, MlsEngine
from meshd.e2e import session_wire as sw
from meshd.e2e.sessions import RESET_INTERVAL_S, Notice, SendPayload, SessionManager
from meshd.errors import FailedPrecondition, InvalidArgument, MeshdError, NotFound, WireError
from meshd.store.sessions import SessionTables

#: Default self-update interval of a 1:1 session (the group layer's default too).
DEFAULT_UPDATE_INTERVAL_S = 24 * 3600.0
_JITTER = 0.1
_PREFIX = "update:"
_FORKS_KEPT = 8


@dataclass(frozen=True, slots=True)
class UpdateState:
    """Our side of a group's self-updates."""

    updated_at: float  # our last self-update (due again after the interval)
    commit: bytes | None = None  # our commit the peer has not confirmed yet
    from_epoch: int = 0  # the epoch that commit was made in

    def encode(self) -> str:
        if self.commit is None:
            return repr(self.updated_at)
        return f"{self.updated_at!r} {self.from_epoch} {self.commit.hex()}"

    @classmethod
    def decode(cls, text: str) -> UpdateState:
        parts = text.split(" ")
        if len(parts) == 1:
            return cls(float(parts[0]))
        if len(parts) != 3:
            raise ValueError("expected 1 or 3 fields")
        return cls(float(parts[0]), bytes.fromhex(parts[2]), int(parts[1]))


class SessionUpdates(SessionManager):
    """Sessions that refresh their keys on an interval and resolve concurrent updates."""

    def __init__(
        self,
        engine: MlsEngine,
        tables: SessionTables,
        *,
        identity: Identity,
        pinned: Callable[[NodeAddress], tofu.Contact | None] = lambda _a: None,
        update_interval: float = DEFAULT_UPDATE_INTERVAL_S,
    ) -> None:
        super().__init__(engine, tables, identity=identity, pinned=pinned)
        if not update_interval >= 0:
            raise InvalidArgument("the update interval is >= 0 s (0: never)",
                                  field="session_update_interval")  # fmt: skip
        self.update_interval = update_interval
        self._updates: dict[bytes, UpdateState] = {}
        for name, value in tables.settings_prefixed(_PREFIX).items():
            try:
                gid = bytes.fromhex(name[len(_PREFIX) :])
                state = UpdateState.decode(value)
            except ValueError:
                state = None
            if state is None or gid not in self._groups:
                tables.delete_setting(name)
            else:
                self._updates[gid] = state
        self._commit_sent: dict[bytes, float] = {}  # group -> last re-send of our commit
        # group -> epochs in which a losing branch's messages may still arrive (late
        # retransmissions of the loser's copies): they fail to open, without a warning.
        self._forks: dict[bytes, set[int]] = {}

    # --- schedule -----------------------------------------------------------------------
    def update_due(self, peer: NodeAddress) -> float | None:
        """When our next self-update in the session with ``peer`` is due (None: never,
        or an unconfirmed one is in flight)."""
        s = self._sessions.get(peer)
        if s is None or not s.confirmed or self.update_interval == 0:
            return None
        state = self._updates.get(s.group_id)
        if state is not None and state.commit is not None:
            return None
        base = s.created_at if state is None else state.updated_at
        spread = hashlib.sha256(self.own.raw + s.group_id).digest()[0] / 256
        return base + self.update_interval * (1 + _JITTER * spread)

    def tick(self, *, now: float) -> None:
        super().tick(now=now)
        for peer in list(self._sessions):
            due = self.update_due(peer)
            if due is not None and now >= due:
                try:
                    self.update(peer, now=now)
                except MeshdError as exc:
                    self.actions.append(Notice("session_update_failed", peer, str(exc),
                                               warning=True))  # fmt: skip

    def update(self, peer: NodeAddress, *, now: float) -> int:
        """Commit a self-update in the session with ``peer`` now; the new epoch."""
        s = self._sessions.get(peer)
        if s is None:
            raise NotFound(f"no session with {peer.text}", field="address")
        if not s.confirmed:  # its Welcome still travels: the peer would join the old epoch
            raise FailedPrecondition(f"{peer.text} has not joined the session yet",
                                     field="address")  # fmt: skip
        state = self._updates.get(s.group_id)
        if state is not None and state.commit is not None:
            raise FailedPrecondition("the last update is not confirmed yet", field="address")
        from_epoch = self.engine.epoch(s.group_id)
        result = self.engine.self_update(s.group_id)  # persisted before it returns
        self._put(s.group_id, UpdateState(now, result.commit, from_epoch))
        self.actions.append(SendPayload(peer, sw.SessionCommit(result.commit, b"").encode(),
                                        None))  # fmt: skip
        self.actions.append(Notice("session_updated", peer, f"epoch {result.epoch}"))
        return result.epoch

    # --- hooks from SessionManager --------------------------------------------------------
    def pending_commit(self, group_id: bytes) -> bytes | None:
        state = self._updates.get(group_id)
        return None if state is None else state.commit

    def peer_in_epoch(self, src: NodeAddress, group_id: bytes, epoch: int) -> None:
        state = self._updates.get(group_id)
        if state is not None and state.commit is not None and epoch > state.from_epoch:
            self._put(group_id, replace(state, commit=None))  # the peer applied it

    def expected_failure(self, group_id: bytes, epoch: int | None) -> bool:
        return epoch is not None and epoch in self._forks.get(group_id, ())

    def group_dropped(self, group_id: bytes) -> None:
        if self._updates.pop(group_id, None) is not None:
            self.tables.delete_setting(_PREFIX + group_id.hex())
        self._forks.pop(group_id, None)
        self._commit_sent.pop(group_id, None)

    def on_commit(self, src: NodeAddress, frame: sw.SessionCommit, *, hops: int,
                  now: float) -> None:  # fmt: skip
        try:
            info = self.engine.peek(frame.commit)
        except (MeshdError, WireError) as exc:
            self.actions.append(Notice("message_undecryptable", src, str(exc), warning=True))
            return
        gid = info.group_id
        if gid is None or info.epoch is None or info.content_type != mls_wire.CONTENT_COMMIT:
            self.actions.append(Notice("message_undecryptable", src, "not a group commit",
                                       warning=True))  # fmt: skip
            return
        if self._groups.get(gid) != src:
            if gid not in self._groups:
                self.reset(src, gid, sw.ResetReason.UNKNOWN_GROUP, "unknown group", now=now)
            else:
                self.actions.append(Notice("message_undecryptable", src,
                                           "not a group of this peer", warning=True))  # fmt: skip
            return
        self._incoming_commit(src, gid, frame.commit, info.epoch, now=now)
        if frame.message:
            self.open_app(src, frame.message, hops=hops, now=now)

    # --- commits ------------------------------------------------------------------------
    def _incoming_commit(
        self, src: NodeAddress, gid: bytes, commit: bytes, epoch: int, *, now: float
    ) -> None:
        current = self.engine.epoch(gid)
        state = self._updates.get(gid)
        own = None if state is None else state.commit
        if epoch == current:
            self._apply(src, gid, commit, now=now)
        elif epoch > current:
            why = f"commit from epoch {epoch}, the group is at {current}"
            self.reset(src, gid, sw.ResetReason.UNKNOWN_GROUP, why, now=now)
        elif state is None or own is None or commit == own:
            # A copy of a commit applied already, or a losing one whose fork was settled
            # (it reached us late): messages of that branch are expected to fail.
            self._lost_branch(gid, epoch + 1)
        elif epoch == state.from_epoch == current - 1:
            # Both ends committed in the same epoch: the lower SHA-256 wins (docs/groups.md).
            if hashlib.sha256(commit).digest() < hashlib.sha256(own).digest():
                self._switch(src, gid, commit, state, now=now)
            else:
                self._lost_branch(gid, current)
                self._resend_commit(src, gid, own, now=now)
        else:
            self._lost_branch(gid, epoch + 1)
            self._resend_commit(src, gid, own, now=now)  # it may have missed ours

    def _lost_branch(self, gid: bytes, epoch: int) -> None:
        epochs = self._forks.setdefault(gid, set())
        epochs.add(epoch)
        if len(epochs) > _FORKS_KEPT:
            epochs.discard(min(epochs))

    def _apply(self, src: NodeAddress, gid: bytes, commit: bytes, *, now: float) -> bool:
        try:
            result = self.engine.process(commit)
        except MeshdError as exc:
            self.actions.append(Notice("message_undecryptable", src, str(exc), warning=True))
            return False
        if not isinstance(result, EpochChanged):
            return False
        others = {m.address for m in result.members if m.verified} - {self.own}
        committer = result.committer
        if result.removed or others != {src} or committer is None or committer.address != src:
            # Not the peer's self-update of our 1:1 group: the group is unusable, rebuild.
            self.reset(src, gid, sw.ResetReason.WELCOME_REFUSED,
                       "commit changed the 1:1 group's members", now=now)  # fmt: skip
            s = self._sessions.get(src)
            if s is not None and s.group_id == gid:
                self._sessions.pop(src, None)
                self.tables.delete_session(src)
            self._drop_group(gid)
            return False
        self._confirm(src, gid)
        self.peer_in_epoch(src, gid, result.epoch)  # the peer's commit builds on ours
        # The proof that we are in the new epoch: the committer stops attaching its commit.
        proof = sw.Sealed(sw.SealedType.CONTROL, os.urandom(8), None).encode()
        ciphertext = self.engine.encrypt(gid, proof)
        self.actions.append(SendPayload(src, sw.SessionApp(ciphertext).encode(), None))
        return True

    def _switch(
        self, src: NodeAddress, gid: bytes, commit: bytes, state: UpdateState, *, now: float
    ) -> None:
        """Our update lost the fork: take the peer's branch, re-seal what ours carried."""
        try:
            self.engine.rollback(gid, state.from_epoch)
        except MeshdError as exc:
            self.reset(src, gid, sw.ResetReason.UNKNOWN_GROUP, f"cannot roll back: {exc}",
                       now=now)  # fmt: skip
            return
        # Due again at once: the peer's commit did not refresh our leaf.
        redo = state.updated_at - self.update_interval * (1 + _JITTER)
        self._put(gid, UpdateState(redo))
        if not self._apply(src, gid, commit, now=now):
            return
        self.actions.append(Notice("session_fork_resolved", src, "the peer's update won"))
        s = self._sessions.get(src)
        if s is None or s.group_id != gid:
            return
        ours = [r for r in self.tables.sealed_in_group(gid) if r.created_at >= state.updated_at]
        self.reseal(s, ours, now=now)

    def _resend_commit(self, src: NodeAddress, gid: bytes, own: bytes, *, now: float) -> None:
        last = self._commit_sent.get(gid)
        if last is not None and now - last < RESET_INTERVAL_S:
            return
        self._commit_sent[gid] = now
        self.actions.append(SendPayload(src, sw.SessionCommit(own, b"").encode(), None))

    def _put(self, gid: bytes, state: UpdateState) -> None:
        self._updates[gid] = state
        self.tables.set_setting(_PREFIX + gid.hex(), state.encode())


__all__ = ["DEFAULT_UPDATE_INTERVAL_S", "SessionUpdates", "UpdateState"]
