"""Binary encoding of the persisted group state (format 2) and of its commit-log entries.

Why not JSON (format 1): in a 256-member group the state was ~415 KB, rewritten after every
change (bench/groups_bench.py). Most of it was the 9 kept epoch views, each a full copy of
the roster and leaf keys in hex, and the commit log in hex. Format 2 writes the first view
in full and each later one as its difference to the one before (a commit changes a few
entries), bytes as bytes; the commit log can be left out (``log=False``) and stored once
per entry beside it (``meshd/store/groups.py``), since entries never change.

Layout (big-endian): ``b"MGS\\x02"``, u8 len + group id, u16 len + name (UTF-8), u64 epoch,
u64 joined_epoch, f64 updated_at, f64 quiet_until, u8 orphaned; u16 views, each: u64
epoch, 32-byte tip, u32 n + (16-byte address, u8 role) set, u32 n + address removed, u32
n + (u32 leaf, u8 len + node key) set, u32 n + u32 leaf removed; u16 pending, each: u8
action, f64 due, targets; u8 has_log, u16 entries, each u32 len + ``encode_entry``.
Targets: u16 n + (address, u8 role).
"""

from __future__ import annotations

import struct
from typing import Any

from meshd.address import ADDRESS_LEN, NodeAddress
from meshd.e2e.group_wire import COMMIT_ID_LEN, Action, Role
from meshd.e2e.groups_state import EpochView, GroupState, LogEntry, PendingOp
from meshd.errors import MeshdError, StoreError

MAGIC = b"MGS\x02"
_HEAD = struct.Struct(">QQddB")
_U8, _U16, _U32, _U64, _F64 = (struct.Struct(f) for f in (">B", ">H", ">I", ">Q", ">d"))

Targets = tuple[tuple[NodeAddress, Role], ...]


class _Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def put(self, fmt: struct.Struct, *values: object) -> None:
        self.parts.append(fmt.pack(*values))

    def raw(self, data: bytes) -> None:
        self.parts.append(data)

    def blob(self, fmt: struct.Struct, data: bytes) -> None:
        self.parts.append(fmt.pack(len(data)))
        self.parts.append(data)

    def targets(self, targets: Targets) -> None:
        self.put(_U16, len(targets))
        for address, role in targets:
            self.raw(address.raw)
            self.put(_U8, int(role))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.at = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise StoreError("group state is truncated", field="group_state")
        out = bytes(self.data[self.at : self.at + n])
        self.at += n
        return out

    def get(self, fmt: struct.Struct) -> tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size))

    def int(self, fmt: struct.Struct) -> int:
        return int(self.get(fmt)[0])

    def blob(self, fmt: struct.Struct) -> bytes:
        return self.take(self.int(fmt))

    def address(self) -> NodeAddress:
        return NodeAddress(self.take(ADDRESS_LEN))

    def targets(self) -> Targets:
        return tuple((self.address(), Role(self.int(_U8))) for _ in range(self.int(_U16)))

    def end(self) -> None:
        if self.at != len(self.data):
            raise StoreError("group state has trailing bytes", field="group_state")


def encode_state(st: GroupState, *, log: bool) -> bytes:
    """Format 2 of ``st`` (with its commit log when ``log``)."""
    w = _Writer()
    w.raw(MAGIC)
    w.blob(_U8, st.group_id)
    w.blob(_U16, st.name.encode())
    w.put(_HEAD, st.epoch, st.joined_epoch, st.updated_at, st.quiet_until, int(st.orphaned))
    w.put(_U16, len(st.views))
    prev_roles: dict[NodeAddress, Role] = {}
    prev_leaves: dict[int, bytes] = {}
    for epoch in sorted(st.views):
        view = st.views[epoch]
        w.put(_U64, epoch)
        w.raw(view.tip)
        roles = [(a, r) for a, r in view.roles.items() if prev_roles.get(a) is not r]
        w.put(_U32, len(roles))
        for address, role in roles:
            w.raw(address.raw)
            w.put(_U8, int(role))
        gone = [a for a in prev_roles if a not in view.roles]
        w.put(_U32, len(gone))
        for address in gone:
            w.raw(address.raw)
        leaves = [(i, k) for i, k in view.leaves.items() if prev_leaves.get(i) != k]
        w.put(_U32, len(leaves))
        for index, key in leaves:
            w.put(_U32, index)
            w.blob(_U8, key)
        dropped = [i for i in prev_leaves if i not in view.leaves]
        w.put(_U32, len(dropped))
        for index in dropped:
            w.put(_U32, index)
        prev_roles, prev_leaves = view.roles, view.leaves
    w.put(_U16, len(st.pending))
    for op in st.pending:
        w.put(_U8, int(op.action))
        w.put(_F64, op.due)
        w.targets(op.targets)
    entries = list(st.log.values()) if log else []
    w.put(_U8, int(log))
    w.put(_U16, len(entries))
    for entry in entries:
        w.blob(_U32, encode_entry(entry))
    return b"".join(w.parts)


def decode_state(blob: bytes) -> tuple[GroupState, bool]:
    """A format-2 state and whether it carried its log (else it is stored beside it)."""
    try:
        r = _Reader(blob)
        if r.take(len(MAGIC)) != MAGIC:
            raise StoreError("not a format-2 group state", field="group_state")
        group_id = r.blob(_U8)
        name = r.blob(_U16).decode()
        epoch, joined, updated_at, quiet_until, orphaned = r.get(_HEAD)
        views: dict[int, EpochView] = {}
        roles: dict[NodeAddress, Role] = {}
        leaves: dict[int, bytes] = {}
        for _ in range(r.int(_U16)):
            view_epoch = r.int(_U64)
            tip = r.take(COMMIT_ID_LEN)
            roles = dict(roles)
            leaves = dict(leaves)
            for _ in range(r.int(_U32)):
                address = r.address()
                roles[address] = Role(r.int(_U8))
            for _ in range(r.int(_U32)):
                del roles[r.address()]
            for _ in range(r.int(_U32)):
                index = r.int(_U32)
                leaves[index] = r.blob(_U8)
            for _ in range(r.int(_U32)):
                del leaves[r.int(_U32)]
            views[view_epoch] = EpochView(tip, roles, leaves)
        pending: list[PendingOp] = []
        for _ in range(r.int(_U16)):
            action = Action(r.int(_U8))
            due = float(r.get(_F64)[0])
            pending.append(PendingOp(action, r.targets(), due))
        has_log = bool(r.int(_U8))
        state = GroupState(group_id, name, int(epoch), int(joined), views, pending=pending,
                           updated_at=float(updated_at), quiet_until=float(quiet_until),
                           orphaned=bool(orphaned))  # fmt: skip
        for _ in range(r.int(_U16)):
            entry = decode_entry(r.blob(_U32))
            state.log[entry.epoch] = entry
        r.end()
    except StoreError:
        raise
    except (MeshdError, ValueError, KeyError, struct.error, UnicodeDecodeError) as exc:
        raise StoreError(f"unreadable group state: {exc}", field="group_state") from exc
    if state.epoch not in state.views:
        raise StoreError("group state lacks its current view", field="group_state")
    return state, has_log


def encode_entry(entry: LogEntry) -> bytes:
    """One commit-log entry: u64 epoch, 32-byte id, u8 mine, u8 action, targets, envelope."""
    w = _Writer()
    w.put(_U64, entry.epoch)
    w.raw(entry.commit_id)
    w.put(_U8, int(entry.mine))
    w.put(_U8, int(entry.action))
    w.targets(entry.targets)
    w.raw(entry.envelope)
    return b"".join(w.parts)


def decode_entry(blob: bytes) -> LogEntry:
    try:
        r = _Reader(blob)
        epoch = r.int(_U64)
        commit_id = r.take(COMMIT_ID_LEN)
        mine = bool(r.int(_U8))
        action = Action(r.int(_U8))
        targets = r.targets()
        envelope = r.take(len(r.data) - r.at)
    except StoreError:
        raise
    except (MeshdError, ValueError, struct.error) as exc:
        raise StoreError(f"unreadable group log entry: {exc}", field="group_log") from exc
    return LogEntry(epoch, commit_id, envelope, mine, action, targets)
