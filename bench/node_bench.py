"""Two Nodes in one process over the in-memory transport (real MeshCore, real SQLite):
messages/s from A's send_message to B's event stream, and ACK latency. One JSON line.

    python3 -m bench.node_bench [N]
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from meshd.crypto.identity import Identity
from meshd.logging import make_logger
from meshd.node import Node
from meshd.node_api import AppEventKind, Caller
from meshd.router.events import DeliveryState
from meshd.testing.memtransport import MemoryTransport, connect

APP = Caller(uid=0, gid=0, pid=0, app_id="bench", is_admin=True)


def _open(root: Path, name: str) -> tuple[Node, MemoryTransport]:
    made: list[MemoryTransport] = []

    def factory(identity: Identity) -> list[MemoryTransport]:
        made.append(MemoryTransport(identity.public, name=name))
        return made

    node = Node.open(
        root / name, transports=factory, logger=make_logger(level="error"), rng=random.Random(1)
    )
    return node, made[0]


async def run(n: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as d:
        a, ta = _open(Path(d), "a")
        b, tb = _open(Path(d), "b")
        connect(ta, tb)
        await a.start()
        await b.start()
        payload = b"x" * 1024
        # Latency at low load: one message at a time, until the sender sees DELIVERED.
        a_events = a.subscribe(APP, after_cursor=None)
        lat: list[float] = []
        for _ in range(50):
            t0 = time.perf_counter()
            rec = await a.send_message(APP, b.address, payload, lifetime_s=None)
            async for ev in a_events:
                m = ev.message
                if m and m.message_id == rec.message_id and m.state is DeliveryState.DELIVERED:
                    break
            lat.append(time.perf_counter() - t0)
        await a_events.aclose()  # type: ignore[attr-defined]
        # Throughput: 64 concurrent senders, count MESSAGE_RECEIVED on B.
        b_events = b.subscribe(APP, after_cursor=b.store.last_cursor())
        got = 0

        async def consume() -> None:
            nonlocal got
            async for ev in b_events:
                if ev.kind is AppEventKind.MESSAGE_RECEIVED:
                    got += 1
                    if got == n:
                        return

        consumer = asyncio.create_task(consume())
        t0 = time.perf_counter()
        queue = iter(range(n))

        async def sender() -> None:
            for _ in queue:
                await a.send_message(APP, b.address, payload, lifetime_s=None)

        await asyncio.gather(*(sender() for _ in range(64)))
        sent_s = time.perf_counter() - t0
        await asyncio.wait_for(consumer, 120)
        total_s = time.perf_counter() - t0
        await b_events.aclose()  # type: ignore[attr-defined]
        await a.stop()
        await b.stop()
    return {
        "bench": "node_memlink",
        "n": n,
        "send_rate_msg_s": round(n / sent_s, 1),
        "delivered_rate_msg_s": round(n / total_s, 1),
        "delivery_ack_p50_ms": round(statistics.median(lat) * 1e3, 2),
    }


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    print(json.dumps(asyncio.run(run(n))))


if __name__ == "__main__":
    main()
