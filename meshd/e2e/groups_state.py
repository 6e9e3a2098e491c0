"""Per-group meshd state beside the MLS state: roles, per-epoch views, commit log, pending.

``GroupState`` serializes to a JSON blob (``to_bytes``/``from_bytes``) that the daemon
stores in SQLite after every change; transient buffers (messages from later epochs,
fragments) are not persisted: they are asked for again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from meshd.address import NodeAddress
from meshd.e2e.group_wire import COMMIT_ID_LEN, Action, Fragment, Role
from meshd.errors import FrameDecodeError, StoreError

#: Views (roles + leaf owners) kept per group: as many past epochs as the MLS store keeps
#: (meshd.crypto.mls.storage.EPOCHS_KEPT), since a fork older than that cannot be rolled back.
VIEWS_KEPT = 9
#: Applied commits kept per group to serve catch-up requests of members who were offline.
COMMITS_KEPT = 64
#: Messages from later epochs (or another branch) held until the commits arrive.
BUFFER_MAX = 256
GENESIS = bytes(COMMIT_ID_LEN)


@dataclass(slots=True)
class EpochView:
    """What meshd knows about one epoch: who holds which leaf, and each member's role."""

    tip: bytes  # id of the commit that produced this epoch (GENESIS at creation)
    roles: dict[NodeAddress, Role]
    leaves: dict[int, bytes]  # leaf index -> node key

    def role(self, address: NodeAddress) -> Role | None:
        return self.roles.get(address)

    def admins(self) -> list[NodeAddress]:
        return sorted(a for a, r in self.roles.items() if r is Role.ADMIN)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A commit this node applied, starting at ``epoch`` (kept for catch-up and forks)."""

    epoch: int
    commit_id: bytes
    envelope: bytes  # the encoded GroupCommit payload, as served to others
    mine: bool
    action: Action
    targets: tuple[tuple[NodeAddress, Role], ...]


@dataclass(frozen=True, slots=True)
class PendingOp:
    """A change to redo: lost in a fork, or a leave request waiting for its turn."""

    action: Action
    targets: tuple[tuple[NodeAddress, Role], ...]
    due: float


@dataclass(slots=True)
class Buffered:
    src: NodeAddress
    epoch: int
    payload: bytes
    received_at: float


@dataclass(slots=True)
class GroupState:
    group_id: bytes
    name: str
    epoch: int
    joined_epoch: int
    views: dict[int, EpochView]
    log: dict[int, LogEntry] = field(default_factory=dict)
    pending: list[PendingOp] = field(default_factory=list)
    updated_at: float = 0.0  # last own self-update (or join)
    quiet_until: float = 0.0  # no re-proposals before this (a fork is still settling)
    orphaned: bool = False  # our branch lost below our join epoch: wait for a new Welcome
    buffered: list[Buffered] = field(default_factory=list)
    catchup_at: dict[NodeAddress, float] = field(default_factory=dict)
    pushed_at: dict[NodeAddress, float] = field(default_factory=dict)

    @property
    def view(self) -> EpochView:
        return self.views[self.epoch]

    @property
    def tip(self) -> bytes:
        return self.view.tip

    def members(self) -> list[NodeAddress]:
        return sorted(self.view.roles)

    def advance(self, entry: LogEntry, view: EpochView) -> None:
        """Record an applied commit and the epoch it produced; trim what is out of range."""
        self.log[entry.epoch] = entry
        self.epoch = entry.epoch + 1
        self.views[self.epoch] = view
        for e in sorted(self.views)[:-VIEWS_KEPT]:
            del self.views[e]
        for e in sorted(self.log)[:-COMMITS_KEPT]:
            del self.log[e]

    def truncate(self, epoch: int) -> list[LogEntry]:
        """Forget everything after ``epoch`` (a rollback); return the dropped log entries."""
        dropped = [self.log.pop(e) for e in sorted(self.log) if e >= epoch]
        for e in [e for e in self.views if e > epoch]:
            del self.views[e]
        self.epoch = epoch
        return dropped

    # -- persistence --------------------------------------------------------------

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "v": 1,
            "group_id": self.group_id.hex(),
            "name": self.name,
            "epoch": self.epoch,
            "joined_epoch": self.joined_epoch,
            "updated_at": self.updated_at,
            "quiet_until": self.quiet_until,
            "orphaned": self.orphaned,
            "views": {str(e): _view_doc(v) for e, v in self.views.items()},
            "log": [_entry_doc(x) for x in self.log.values()],
            "pending": [
                {"action": int(p.action), "targets": _targets_doc(p.targets), "due": p.due}
                for p in self.pending
            ],
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> GroupState:
        try:
            doc = json.loads(blob)
            if doc.get("v") != 1:
                raise StoreError("unknown group state version", field="group_state")
            state = cls(
                group_id=bytes.fromhex(doc["group_id"]),
                name=str(doc["name"]),
                epoch=int(doc["epoch"]),
                joined_epoch=int(doc["joined_epoch"]),
                views={int(e): _view(v) for e, v in doc["views"].items()},
                log={},
                pending=[
                    PendingOp(Action(p["action"]), _targets(p["targets"]), float(p["due"]))
                    for p in doc["pending"]
                ],
                updated_at=float(doc["updated_at"]),
                quiet_until=float(doc["quiet_until"]),
                orphaned=bool(doc["orphaned"]),
            )
            for x in doc["log"]:
                entry = LogEntry(
                    int(x["epoch"]),
                    bytes.fromhex(x["id"]),
                    bytes.fromhex(x["envelope"]),
                    bool(x["mine"]),
                    Action(x["action"]),
                    _targets(x["targets"]),
                )
                state.log[entry.epoch] = entry
            if state.epoch not in state.views:
                raise StoreError("group state lacks its current view", field="group_state")
            return state
        except StoreError:
            raise
        except (ValueError, KeyError, TypeError, FrameDecodeError) as exc:
            raise StoreError(f"unreadable group state: {exc}", field="group_state") from exc


def _targets_doc(targets: tuple[tuple[NodeAddress, Role], ...]) -> list[list[Any]]:
    return [[a.raw.hex(), int(r)] for a, r in targets]


def _targets(doc: list[list[Any]]) -> tuple[tuple[NodeAddress, Role], ...]:
    return tuple((NodeAddress(bytes.fromhex(a)), Role(int(r))) for a, r in doc)


def _view_doc(v: EpochView) -> dict[str, Any]:
    return {
        "tip": v.tip.hex(),
        "roles": {a.raw.hex(): int(r) for a, r in v.roles.items()},
        "leaves": {str(i): k.hex() for i, k in v.leaves.items()},
    }


def _view(doc: dict[str, Any]) -> EpochView:
    return EpochView(
        bytes.fromhex(doc["tip"]),
        {NodeAddress(bytes.fromhex(a)): Role(int(r)) for a, r in doc["roles"].items()},
        {int(i): bytes.fromhex(k) for i, k in doc["leaves"].items()},
    )


def _entry_doc(x: LogEntry) -> dict[str, Any]:
    return {
        "epoch": x.epoch,
        "id": x.commit_id.hex(),
        "envelope": x.envelope.hex(),
        "mine": x.mine,
        "action": int(x.action),
        "targets": _targets_doc(x.targets),
    }


class Reassembler:
    """Puts FRAGMENT payloads back together, per (source, fragment id); bounded."""

    def __init__(self, *, max_partial: int = 32, timeout_s: float = 300.0) -> None:
        self._partial: dict[tuple[NodeAddress, bytes], tuple[float, dict[int, bytes], int]] = {}
        self._max = max_partial
        self._timeout = timeout_s

    def add(self, src: NodeAddress, frag: Fragment, *, now: float) -> bytes | None:
        for key in [k for k, v in self._partial.items() if v[0] + self._timeout < now]:
            del self._partial[key]
        key = (src, frag.frag_id)
        entry = self._partial.get(key)
        if entry is None:
            if len(self._partial) >= self._max:  # drop the oldest partial payload
                oldest = min(self._partial, key=lambda k: self._partial[k][0])
                del self._partial[oldest]
            entry = (now, {}, frag.count)
            self._partial[key] = entry
        if entry[2] != frag.count:
            raise FrameDecodeError("fragment count changed", field="count")
        entry[1][frag.index] = frag.chunk
        if len(entry[1]) < frag.count:
            return None
        del self._partial[key]
        return b"".join(entry[1][i] for i in range(frag.count))
