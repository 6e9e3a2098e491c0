"""Cost of the store calls the node makes on the event loop; prints one JSON line.

    python3 -m bench.store_bench
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from meshd.address import NodeAddress
from meshd.node_api import AppEventKind
from meshd.router.events import DeliveryState
from meshd.store import Store

N = 2000


def main() -> None:
    dst = NodeAddress(b"\x07" * 16)
    with tempfile.TemporaryDirectory() as d:
        store = Store.open(Path(d) / "meshd.db")
        payload = b"x" * 1024
        t0 = time.perf_counter()
        for i in range(N):
            store.add_outgoing(
                message_id=i.to_bytes(8, "big"),
                app_id="bench",
                dst=dst,
                content=payload,
                created_at=time.time(),
                expires_at=time.time() + 60,
            )
            store.commit()
        send_commit = (time.perf_counter() - t0) / N
        t0 = time.perf_counter()
        for i in range(N):
            store.add_outgoing(
                message_id=(N + i).to_bytes(8, "big"),
                app_id="bench",
                dst=dst,
                content=payload,
                created_at=time.time(),
                expires_at=time.time() + 60,
            )
            if i % 32 == 31:
                store.commit()
        store.commit()
        send_grouped = (time.perf_counter() - t0) / N
        t0 = time.perf_counter()
        for i in range(N):
            store.set_outgoing_state(
                i.to_bytes(8, "big"), DeliveryState.DELIVERED, None, at=time.time()
            )
        store.commit()
        state = (time.perf_counter() - t0) / N
        t0 = time.perf_counter()
        for i in range(N):
            store.events_after("bench", i, limit=16)
        read = (time.perf_counter() - t0) / N
        for _ in range(20_000):
            store.append_event(None, AppEventKind.PATH_CHANGED, time.time(), peer=dst)
        store.commit()
        t0 = time.perf_counter()
        store.prune_events(now=time.time(), keep=10_000, limit=10_000)
        store.commit()
        prune = time.perf_counter() - t0
        store.close()
        t0 = time.perf_counter()
        Store.open(Path(d) / "meshd.db").close()
        reopen = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "bench": "store",
                "n": N,
                "send_commit_each_ms": round(send_commit * 1e3, 4),
                "send_grouped_32_ms": round(send_grouped * 1e3, 4),
                "state_change_ms": round(state * 1e3, 4),
                "events_after_16_ms": round(read * 1e3, 4),
                "prune_10k_events_ms": round(prune * 1e3, 2),
                "open_ms": round(reopen * 1e3, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
