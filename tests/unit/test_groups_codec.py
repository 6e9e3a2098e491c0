"""Format 2 of the stored group state (meshd/e2e/groups_codec.py) and the group_log rows."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.address import NodeAddress
from meshd.e2e.group_wire import Action, Role
from meshd.e2e.groups_codec import decode_entry, decode_state, encode_entry, encode_state
from meshd.e2e.groups_state import EpochView, GroupState, LogEntry, PendingOp
from meshd.errors import StoreError
from meshd.store import Store
from meshd.store.groups import GroupTables

addresses = st.binary(min_size=16, max_size=16).map(NodeAddress)
roles = st.sampled_from(list(Role))
targets = st.lists(st.tuples(addresses, roles), max_size=4).map(tuple)
views = st.builds(
    EpochView,
    st.binary(min_size=32, max_size=32),
    st.dictionaries(addresses, roles, max_size=6),
    st.dictionaries(st.integers(0, 2**32 - 1), st.binary(min_size=1, max_size=40), max_size=6),
)
entries = st.builds(LogEntry, st.integers(0, 2**63), st.binary(min_size=32, max_size=32),
                    st.binary(max_size=300), st.booleans(), st.sampled_from(list(Action)),
                    targets)  # fmt: skip
pending = st.builds(PendingOp, st.sampled_from(list(Action)), targets,
                    st.floats(allow_nan=False))  # fmt: skip


@st.composite
def states(draw: st.DrawFn) -> GroupState:
    epochs = draw(st.lists(st.integers(0, 2**40), min_size=1, max_size=9, unique=True))
    log = {e.epoch: e for e in draw(st.lists(entries, max_size=5))}
    return GroupState(
        group_id=draw(st.binary(min_size=1, max_size=255)),
        name=draw(st.text(max_size=40)),
        epoch=max(epochs),
        joined_epoch=draw(st.integers(0, 2**40)),
        views={e: draw(views) for e in epochs},
        log=log,
        pending=draw(st.lists(pending, max_size=3)),
        updated_at=draw(st.floats(allow_nan=False)),
        quiet_until=draw(st.floats(allow_nan=False)),
        orphaned=draw(st.booleans()),
    )


@settings(max_examples=60, deadline=None)
@given(states(), st.booleans())
def test_round_trip(state: GroupState, with_log: bool) -> None:
    got, has_log = decode_state(encode_state(state, log=with_log))
    assert has_log is with_log
    if not with_log:
        got.log = state.log
    assert got == state


@settings(max_examples=60, deadline=None)
@given(entries)
def test_entry_round_trip(entry: LogEntry) -> None:
    assert decode_entry(encode_entry(entry)) == entry


@settings(max_examples=60, deadline=None)
@given(states(), st.data())
def test_damaged_blobs_raise_store_error(state: GroupState, data: st.DataObject) -> None:
    blob = encode_state(state, log=True)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(StoreError):
        decode_state(blob[:cut])
    with pytest.raises(StoreError):
        decode_state(blob + b"\x00")
    flipped = bytearray(blob)
    flipped[data.draw(st.integers(0, len(blob) - 1))] ^= 0xFF
    with contextlib.suppress(StoreError):  # may decode (a flipped key byte); nothing else
        decode_state(bytes(flipped))


def big_state(members: int = 256, epochs: int = 9) -> GroupState:
    addrs = [NodeAddress(i.to_bytes(16, "big")) for i in range(members)]
    views = {}
    for e in range(epochs):
        views[e] = EpochView(bytes([e]) * 32, {a: Role.MEMBER for a in addrs},
                             {i: bytes([i % 256, e]) * 16 for i in range(members)})  # fmt: skip
    log = {e: LogEntry(e, bytes([e]) * 32, b"c" * 700, False, Action.UPDATE, ())
           for e in range(epochs - 1)}  # fmt: skip
    return GroupState(b"g" * 32, "big", epochs - 1, 0, views, log)


def test_views_are_stored_as_differences() -> None:
    state = big_state()
    blob = encode_state(state, log=False)
    one_view = 256 * (16 + 1) + 256 * (4 + 1 + 32)
    # The first view in full; each later one changes one leaf key per member here (an
    # update of every member), still far below the ~25 KB per view of format 1.
    assert len(blob) < one_view + 8 * 256 * 38 + 200
    assert len(state.to_bytes()) > 2 * len(blob)
    assert decode_state(blob)[0].views == state.views


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "meshd.db")
    yield s
    s.close()


def test_store_writes_only_changed_log_entries_and_reads_format_1(store: Store) -> None:
    t = GroupTables(store)
    state = big_state(members=4)
    store._write("INSERT INTO group_states VALUES (?, ?, 0)", (state.group_id, state.to_bytes()))
    [old] = t.states()[0]  # a format-1 (JSON) row from before
    assert old == state
    t.save(old, now=1.0)
    assert store._read("SELECT count(*) FROM group_log")[0][0] == 8
    blob = store._read("SELECT state FROM group_states")[0][0]
    assert bytes(blob).startswith(b"MGS\x02")
    writes: list[str] = []
    real = store._write

    def spy(sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        writes.append(sql.split()[0] + (" log" if "group_log" in sql else ""))
        return real(sql, params)

    store._write = spy  # type: ignore[method-assign]
    new = LogEntry(8, b"\x09" * 32, b"n" * 700, True, Action.UPDATE, ())
    old.advance(new, EpochView(b"\x09" * 32, dict(old.view.roles), dict(old.view.leaves)))
    t.save(old, now=2.0)
    assert writes == ["INSERT", "INSERT log"]  # the state row and the one new entry
    writes.clear()
    dropped = old.truncate(5)  # a rollback: entries 5.. go
    assert [e.epoch for e in dropped] == [5, 6, 7, 8]
    t.save(old, now=3.0)
    assert sorted(writes) == ["DELETE log"] * 4 + ["INSERT"]
    store._write = real  # type: ignore[method-assign]
    [back] = t.states()[0]
    assert back == old and sorted(back.log) == [0, 1, 2, 3, 4]
    t.delete(old.group_id)
    assert store._read("SELECT count(*) FROM group_log")[0][0] == 0
