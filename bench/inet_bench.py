"""inet link cost: two InetTransports over loopback TCP; prints one JSON line.

    python3 -m bench.inet_bench

Figures: handshake time, one-way throughput of 1 KiB frames (sender queues in bursts
bounded by the link's send queue, receiver counts), and the round-trip p50/p99 of a
1 KiB frame echoed back (low load, one in flight).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Any

from meshd.crypto.identity import Identity
from meshd.router.events import LinkId
from meshd.transports.base import Link
from meshd.transports.inet import InetConfig, InetTransport

N_THROUGHPUT = 50_000
N_RTT = 2_000
FRAME = b"\x5a" * 1024


class Quiet:
    """Logger that drops everything: the bench prints one JSON line only."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class Sink:
    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.link: Link | None = None
        self.count = 0
        self.got = asyncio.Event()
        self.up = asyncio.Event()

    def link_up(self, link: Link) -> LinkId:
        self.link = link
        self.up.set()
        return 1

    def frame_received(self, link_id: LinkId, frame: bytes) -> None:
        self.count += 1
        if self.echo and self.link is not None:
            self.link.send(frame)
        self.got.set()

    def link_down(self, link_id: LinkId) -> None:
        self.link = None


async def run() -> dict[str, float]:
    cfg = InetConfig(keepalive_interval=60, dead_after=120, max_queue_bytes=4 << 20)
    sa, sb = Sink(echo=False), Sink(echo=False)
    a = InetTransport(Identity.generate(), listen=[("127.0.0.1", 0)], discovery=False,
                      config=cfg, logger=Quiet())
    await a.start(sa)
    b = InetTransport(Identity.generate(), listen=[], discovery=False, config=cfg,
                      logger=Quiet())
    await b.start(sb)
    t0 = time.perf_counter()
    link = await b.dial("127.0.0.1", a.advertised_port)
    handshake_ms = (time.perf_counter() - t0) * 1000
    assert link is not None
    await sa.up.wait()

    t0 = time.perf_counter()
    sent = 0
    while sa.count < N_THROUGHPUT:
        while sent < N_THROUGHPUT and sent - sa.count < 2000:
            link.send(FRAME)
            sent += 1
        await asyncio.sleep(0)
    throughput = N_THROUGHPUT / (time.perf_counter() - t0)

    sa.echo = True
    rtts = []
    for _ in range(N_RTT):
        sb.got.clear()
        t1 = time.perf_counter()
        link.send(FRAME)
        await sb.got.wait()
        rtts.append((time.perf_counter() - t1) * 1000)
    await b.stop()
    await a.stop()
    rtts.sort()
    return {
        "handshake_ms": round(handshake_ms, 2),
        "frames_per_s_1k": round(throughput),
        "rtt_p50_ms": round(statistics.median(rtts), 3),
        "rtt_p99_ms": round(rtts[int(len(rtts) * 0.99)], 3),
        "dropped": getattr(link, "frames_dropped", 0),
    }


def main() -> None:
    print(json.dumps({"bench": "inet_link", **asyncio.run(run())}))


if __name__ == "__main__":
    main()
