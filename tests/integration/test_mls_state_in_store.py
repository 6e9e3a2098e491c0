"""The MLS state in the node's database (meshd/crypto/mls/storage.py): a receiver killed at
its store commit loses nothing, since the ratchet state commits in the same transaction as
the messages (the copy of the state directory taken there has neither the message nor the
ratchet advance, and the sender's retransmission opens again); state kept the old way, in
its own database, is imported."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from meshd.crypto.mls.storage import _SCHEMA, _TABLES, DB_NAME, SHARED_PREFIX
from meshd.errors import StoreError
from meshd.node import Node
from meshd.router.events import DeliveryState
from meshd.testing.memtransport import connect
from tests.integration.test_coalesce_node import received
from tests.integration.test_e2e_sessions import CHAT, open_node, until

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("also_seals", [False, True])
async def test_message_opened_but_not_committed_is_delivered_after_restart(
    tmp_path: Path, also_seals: bool
) -> None:
    """``also_seals``: b's session also seals in the window of that pass, so its state
    cannot wait for the commit: only one transaction for both keeps the open."""
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    b2 = None
    try:
        await a.send_message(CHAT, b.address, b"hello", lifetime_s=None)
        await until(lambda: received(b, a) == [b"hello"])
        await until(lambda: a.session_info(b.address).established)
        # The crash: b's state directory as it is on disk when the pass that opened the
        # next message has written its MLS state but not committed its store.
        real_commit = b.store.commit

        def crash_at_commit() -> None:
            if b.store.in_transaction and any(
                r for r in b.store._pending.values() if r  # a received message queued
            ):
                shutil.copytree(tmp_path / "b", tmp_path / "b2",
                                ignore=shutil.ignore_patterns("*.lock", "lock"))  # fmt: skip
                b.store.commit = real_commit  # type: ignore[method-assign]
                raise StoreError("killed")
            real_commit()

        b.store.commit = crash_at_commit  # type: ignore[method-assign]
        session = b.e2e.session(a.address)
        assert session is not None
        if also_seals:
            _seal_when_a_frame_arrives(b, a)
        record = await a.send_message(CHAT, b.address, b"second", lifetime_s=None)
        await until(lambda: (tmp_path / "b2").exists())
        await b.stop()
        b2, tb2 = open_node(tmp_path, "b2", 3)
        connect(ta, tb2)
        await b2.start()
        await until(lambda: received(b2, a) == [b"hello", b"second"], within=30)
        await until(
            lambda: a.get_message(CHAT, record.message_id).state is DeliveryState.DELIVERED,
            within=30,
        )
        # Opened again in the same session: no reset and new session was needed (with the
        # state written before the commit, the retransmission was undecryptable; when b
        # had also sealed, it came through only after a session reset).
        again = b2.e2e.session(a.address)
        assert again is not None and again.group_id == session.group_id
    finally:
        await a.stop()
        await b.stop()
        if b2 is not None:
            await b2.stop()


def _seal_when_a_frame_arrives(b: Node, a: Node) -> None:
    """b seals in its session with a (a ciphertext that never leaves) as the frame with
    a's message arrives, before the pass that opens it: one window, a seal and an open."""
    real = b._frame_received
    session = b.e2e.session(a.address)
    assert session is not None and b._mls is not None
    engine, group_id = b._mls, session.group_id

    def frame_received(link_id: int, frame: bytes) -> None:
        engine.encrypt(group_id, b"sealed in the same window")
        real(link_id, frame)

    b._frame_received = frame_received  # type: ignore[method-assign]


async def test_the_mls_state_lives_in_the_node_database(tmp_path: Path) -> None:
    a, _ = open_node(tmp_path, "a", 1)
    await a.start()
    try:
        tables = {r[0] for r in a.store._read("SELECT name FROM sqlite_master")}
        assert {"mls_meta", "mls_groups", "mls_epochs", "mls_key_packages"} <= tables
        assert (a.state_dir / "meshd.db").exists()
        assert not (a.state_dir / "mls" / DB_NAME).exists()  # no database of its own
    finally:
        await a.stop()


def _to_old_layout(state_dir: Path) -> None:
    """Move the MLS tables out of meshd.db into mls/mls.sqlite3, as meshd kept them
    before they moved (same rows, tables without the prefix)."""
    main = sqlite3.connect(state_dir / "meshd.db", isolation_level=None)
    (state_dir / "mls").mkdir(exist_ok=True)
    old = sqlite3.connect(state_dir / "mls" / DB_NAME, isolation_level=None)
    for table, sql in zip(_TABLES, _SCHEMA, strict=True):
        old.execute(sql.format(p=""))
        rows = main.execute(f"SELECT * FROM {SHARED_PREFIX}{table}").fetchall()
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            old.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        main.execute(f"DROP TABLE {SHARED_PREFIX}{table}")
    old.close()
    main.close()


async def test_mls_state_from_before_the_move_is_imported(tmp_path: Path) -> None:
    a, ta = open_node(tmp_path, "a", 1)
    b, tb = open_node(tmp_path, "b", 2)
    connect(ta, tb)
    await a.start()
    await b.start()
    b2 = None
    try:
        await a.send_message(CHAT, b.address, b"before", lifetime_s=None)
        await until(lambda: received(b, a) == [b"before"])
        await until(lambda: a.session_info(b.address).established)
        session = b.e2e.session(a.address)
        assert session is not None
        await b.stop()
        _to_old_layout(b.state_dir)
        b2, tb2 = open_node(tmp_path, "b", 3)
        connect(ta, tb2)
        await b2.start()
        assert (b2.state_dir / "mls" / (DB_NAME + ".imported")).exists()
        assert not (b2.state_dir / "mls" / DB_NAME).exists()
        await a.send_message(CHAT, b2.address, b"after", lifetime_s=None)
        await until(lambda: received(b2, a) == [b"before", b"after"])
        again = b2.e2e.session(a.address)  # the same session: its state came along
        assert again is not None and again.group_id == session.group_id
    finally:
        await a.stop()
        await b.stop()
        if b2 is not None:
            await b2.stop()
