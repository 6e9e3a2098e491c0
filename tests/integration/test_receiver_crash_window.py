"""A receiver killed between its MLS state write and its store commit loses nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from meshd.errors import StoreError
from meshd.router.events import DeliveryState
from meshd.testing.memtransport import connect
from tests.integration.test_coalesce_node import received
from tests.integration.test_e2e_sessions import CHAT, open_node, until

pytestmark = pytest.mark.timeout(60)


async def test_message_opened_but_not_committed_is_delivered_after_restart(
    tmp_path: Path,
) -> None:
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
    finally:
        await a.stop()
        await b.stop()
        if b2 is not None:
            await b2.stop()
