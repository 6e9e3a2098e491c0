"""First-message latency after the sender restarts, with and without restored path hints.

In one process (memtransport): a 3-hop line a-b-c-d, a warm message a->d, then a stops
(cleanly) and starts again and at once sends to d. Prints one JSON line: p50 and all runs
of send -> received at d (ms), for path_hint_ttl=30 (the default) and 0 (no restore).

    python -m bench.restart_paths_bench [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from meshd.crypto.identity import Identity
from meshd.logging import make_logger
from meshd.node import Node
from meshd.node_api import AppEvent, AppEventKind, Caller
from meshd.router.core import CoreConfig
from meshd.router.events import DeliveryState
from meshd.testing.memtransport import MemoryTransport, connect

CHAT = Caller(uid=1000, gid=1000, pid=1, app_id="chat", is_admin=False)


def _open(root: Path, name: str, seed: int, ttl: float) -> tuple[Node, MemoryTransport]:
    made: list[MemoryTransport] = []

    def transports(identity: Identity) -> list[MemoryTransport]:
        made.append(MemoryTransport(identity.public, name=name))
        return made

    node = Node.open(root / name, transports=transports, logger=make_logger(level="error"),
                     rng=random.Random(seed), core_config=CoreConfig(path_hint_ttl=ttl))
    return node, made[0]


async def _until(events: AsyncIterator[AppEvent], pred: Callable[[AppEvent], bool]) -> None:
    async def scan() -> None:
        async for ev in events:
            if pred(ev):
                return

    await asyncio.wait_for(scan(), 60)


def _got(payload: bytes) -> Callable[[AppEvent], bool]:
    return lambda e: (e.kind is AppEventKind.MESSAGE_RECEIVED and e.message is not None
                      and e.message.payload == payload)


def _delivered(message_id: bytes) -> Callable[[AppEvent], bool]:
    return lambda e: (e.kind is AppEventKind.DELIVERY_STATE and e.message is not None
                      and e.message.message_id == message_id
                      and e.message.state is DeliveryState.DELIVERED)


async def _once(root: Path, seed: int, ttl: float) -> float:
    nodes = [_open(root, n, seed * 10 + i, ttl) for i, n in enumerate("abcd")]
    for (_, t1), (_, t2) in itertools.pairwise(nodes):
        connect(t1, t2)
    for node, _ in nodes:
        await node.start()
    a, d = nodes[0][0], nodes[3][0]
    d_ev = d.subscribe(CHAT, after_cursor=None)
    a_ev = a.subscribe(CHAT, after_cursor=None)
    warm = await a.send_message(CHAT, d.address, b"warm", lifetime_s=None)
    await _until(d_ev, _got(b"warm"))
    await _until(a_ev, _delivered(warm.message_id))
    await a_ev.aclose()  # type: ignore[attr-defined]
    await a.stop()
    a2, ta2 = _open(root, "a", seed * 10 + 9, ttl)
    await a2.start()
    connect(ta2, nodes[1][1])
    t0 = time.perf_counter()
    await a2.send_message(CHAT, d.address, b"after restart", lifetime_s=None)
    await _until(d_ev, _got(b"after restart"))
    took = time.perf_counter() - t0
    await d_ev.aclose()  # type: ignore[attr-defined]
    await a2.stop()
    for node, _ in nodes[1:]:
        await node.stop()
    return took


async def _main(runs: int) -> None:
    out: dict[str, object] = {"runs": runs}
    for ttl, key in ((30.0, "with_hints"), (0.0, "without_hints")):
        times = []
        for seed in range(runs):
            with tempfile.TemporaryDirectory() as tmp:
                times.append(await _once(Path(tmp), seed, ttl) * 1e3)
        out[f"{key}_rx_ms_p50"] = round(statistics.median(times), 1)
        out[f"{key}_rx_ms_all"] = sorted(round(t, 1) for t in times)
    print(json.dumps(out))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    asyncio.run(_main(parser.parse_args().runs))
