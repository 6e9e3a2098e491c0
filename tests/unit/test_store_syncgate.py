"""SyncGate: frames and replies wait for the fsync covering them, in order."""

from __future__ import annotations

import asyncio
import threading

import pytest

from meshd.errors import StoreError
from meshd.logging import make_logger
from meshd.store.syncgate import Frames, SyncGate

pytestmark = pytest.mark.timeout(30)


class Disk:
    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.syncs = 0
        self.fail = False

    def sync(self) -> None:
        self.gate.wait(10)
        if self.fail:
            raise StoreError("fsync failed")
        self.syncs += 1


def make(disk: Disk) -> tuple[SyncGate, Frames]:
    sent: Frames = []
    gate = SyncGate(sync=disk.sync, send=sent.extend, log=make_logger(level="error"))
    return gate, sent


async def test_nothing_durable_goes_out_at_once() -> None:
    disk = Disk()
    gate, sent = make(disk)
    fut = asyncio.get_running_loop().create_future()
    gate.submit([(1, b"a")], [fut], durable=False)
    assert sent == [(1, b"a")] and fut.done() and disk.syncs == 0
    await gate.drain()


async def test_durable_waits_for_fsync_and_later_frames_keep_order() -> None:
    disk = Disk()
    disk.gate.clear()
    gate, sent = make(disk)
    loop = asyncio.get_running_loop()
    f1, f2 = loop.create_future(), loop.create_future()
    gate.submit([(1, b"ack")], [f1], durable=True)
    gate.submit([(1, b"route")], [], durable=False)  # behind the first: order kept
    gate.submit([(2, b"ack2")], [f2], durable=True)
    await asyncio.sleep(0.05)
    assert sent == [] and not f1.done()
    disk.gate.set()
    await asyncio.wait_for(f2, 5)
    assert f1.done()
    assert sent == [(1, b"ack"), (1, b"route"), (2, b"ack2")]
    assert disk.syncs == 2  # one for the first batch, one covering the two held meanwhile
    await gate.drain()


async def test_failed_fsync_fails_replies_and_holds_frames() -> None:
    disk = Disk()
    disk.fail = True
    gate, sent = make(disk)
    fut = asyncio.get_running_loop().create_future()
    gate.submit([(1, b"ack")], [fut], durable=True)
    with pytest.raises(StoreError):
        await asyncio.wait_for(fut, 5)
    assert sent == []
    await gate.drain()


async def test_close_releases_what_is_held() -> None:
    disk = Disk()
    gate, sent = make(disk)
    await gate.drain()  # closing: from here everything is held
    fut = asyncio.get_running_loop().create_future()
    gate.submit([(3, b"last")], [fut], durable=True)
    assert sent == [] and not fut.done()
    gate.close(None)  # the store's own final fsync happened
    assert sent == [(3, b"last")] and fut.done()


async def test_syncing_while_fsync_runs_and_on_synced_after_release() -> None:
    disk = Disk()
    disk.gate.clear()
    sent: Frames = []
    told: list[Frames] = []
    gate = SyncGate(
        sync=disk.sync, send=sent.extend, log=make_logger(level="error"),
        on_synced=lambda: told.append(list(sent)),
    )
    assert not gate.syncing
    fut = asyncio.get_running_loop().create_future()
    gate.submit([(1, b"ack")], [fut], durable=True)
    assert gate.syncing and told == []
    disk.gate.set()
    await asyncio.wait_for(fut, 5)
    assert not gate.syncing
    assert told == [[(1, b"ack")]]  # told once, after the frames it covered went out
    await gate.drain()
