"""BLE transport benchmark: one JSON line.

- ``overhead``: bytes the BLE layers add, per fragment (session byte + fragment header)
  and per message (those + the 4-byte record header + 16-byte AEAD tag), at ATT MTU 23,
  185 and 517, for frames of 100 B, 1 KiB and 50 KiB; the reference pays 46 B/fragment
  (/work/shared/REFERENCE.md).
- ``throughput``: two ``BleTransport``s in two processes (bleak allows one central per
  event loop), each on its own virtual BlueZ bus; one sends N frames to the other over
  one link. Frames/s, fragments/s and CPU microseconds per fragment of each side: a
  measure of meshd's own cost per fragment, not of a radio (the virtual BlueZ has no
  airtime). Also with the notification pacing off (``pace_notifications=False``).
  ``--window N`` changes the credit window (measured in docs/ble.md: 255 breaks links).

    python3 -m bench.ble_bench [--frames 1500] [--size 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from meshd.crypto.identity import Identity
from meshd.router.events import LinkId
from meshd.transports.base import Link
from meshd.transports.ble_fragment import fragment, overhead
from meshd.transports.ble_session import PIPE_HEADER, pdu_room
from meshd.transports.framing import HEADER_LEN, TAG_LEN

REFERENCE_OVERHEAD = 46
ROOT = Path(__file__).resolve().parents[1]


def overhead_figures() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for mtu in (23, 185, 517):
        room = pdu_room(mtu)
        per_size = {}
        for size in (100, 1024, 50 * 1024):
            record = size + HEADER_LEN + TAG_LEN
            frag = overhead(record, room)
            n = len(fragment(bytes(record), 0, room))
            per_size[str(size)] = {
                "fragments": n,
                "per_fragment": round((frag + n * PIPE_HEADER) / n, 2),
                "per_message": frag + n * PIPE_HEADER + HEADER_LEN + TAG_LEN,
            }
        out[str(mtu)] = {
            "max_per_fragment": 5 + PIPE_HEADER,
            "continuation_fragment": 2 + PIPE_HEADER,
            "frames": per_size,
        }
    return out


class _Events:
    def __init__(self, want: int) -> None:
        self.links: list[Link] = []
        self.want = want
        self.linked = asyncio.Event()
        self.done = asyncio.Event()
        self.frames = 0
        self.first = 0.0
        self.last = 0.0

    def link_up(self, link: Link) -> LinkId:
        self.links.append(link)
        self.linked.set()
        return LinkId(len(self.links))

    def frame_received(self, link_id: LinkId, frame: bytes) -> None:
        now = time.monotonic()
        if not self.frames:
            self.first = now
        self.frames += 1
        self.last = now
        if self.frames >= self.want:
            self.done.set()

    def link_down(self, link_id: LinkId) -> None:
        pass


async def worker(frames: int, size: int, pace: bool, window: int) -> None:
    """Link up, send ``frames`` frames and receive the peer's; print one JSON line."""
    from meshd.transports.ble import BleConfig, BleTransport
    from meshd.transports.ble_session import SessionConfig

    events = _Events(frames)
    ble = BleTransport(
        Identity.generate(), config=BleConfig(
            max_links=2, pace_notifications=pace, session=SessionConfig(window=window)
        ),
    )
    await ble.start(events)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(events.linked.wait(), 20)
    result: dict[str, Any] = {"linked": bool(events.links)}
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    if events.links:
        link = events.links[0]
        result["central"] = "(central" in link.description
        payload = os.urandom(size)
        for i in range(frames):
            link.send(i.to_bytes(4, "big") + payload[4:])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(events.done.wait(), 90)
        session = getattr(link, "session", None)
        end = time.monotonic() + 60
        # Our own frames must have left too (the transport has no "drained" event).
        while session is not None and session.pending and time.monotonic() < end:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        result["frames"] = events.frames
        result["seconds"] = round(events.last - events.first, 3)
        await asyncio.sleep(1.0)  # let the peer finish before the link goes
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 3)
    result["state"] = ble.status().state.value
    result["counters"] = dict(ble.counters)
    await ble.stop()
    print(json.dumps(result), flush=True)


def run_pair(
    mtu: int, frames: int, size: int, pace: bool, window: int = 32
) -> dict[str, Any]:
    """Two workers on two virtual BlueZ nodes, each sending to the other at once."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    world = subprocess.Popen(
        [sys.executable, "-m", "meshd.testing.virtual_bluez", "--node", "a", "--node", "b",
         "--link", f"a,b,-50,{mtu}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert world.stdout is not None
        buses = {n: v["bus"] for n, v in json.loads(world.stdout.readline())["nodes"].items()}
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.ble_bench", "--worker", "--frames", str(frames),
                 "--size", str(size), "--window", str(window),
                 *([] if pace else ["--no-pace"])],
                stdout=subprocess.PIPE, text=True, cwd=ROOT,
                env={**env, "DBUS_SYSTEM_BUS_ADDRESS": buses[name]},
            )
            for name in ("a", "b")
        ]
        results = []
        for proc in procs:
            text, _ = proc.communicate(timeout=150)
            lines = [ln for ln in text.splitlines() if ln.startswith("{")]
            results.append(json.loads(lines[-1]) if lines else {"error": "no output"})
    finally:
        if world.stdin is not None:
            world.stdin.write("quit\n")
            world.stdin.flush()
        world.wait(10)
    per_frame = len(fragment(bytes(size + HEADER_LEN + TAG_LEN), 0, pdu_room(mtu)))
    out: dict[str, Any] = {"mtu": mtu, "frame_bytes": size, "frames_each_way": frames,
                           "paced": pace, "window": window}
    for res in results:
        # What a receiver got came from the other side: a central receives notifications.
        direction = "peripheral_to_central" if res.get("central") else "central_to_peripheral"
        got = int(res.get("frames", 0))
        secs = float(res.get("seconds", 0.0)) or float("nan")
        out[direction] = {
            "frames_received": got,
            "frames_per_s": round(got / secs, 1) if got else 0.0,
            "fragments_per_s": round(got * per_frame / secs, 1) if got else 0.0,
        }
        role = "central" if res.get("central") else "peripheral"
        handled = max(1, (got + frames) * per_frame)
        out[f"{role}_cpu_us_per_fragment"] = round(1e6 * float(res.get("cpu_s", 0)) / handled, 1)
        out[f"{role}_state_after"] = res.get("state")
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--frames", type=int, default=1500)
    p.add_argument("--size", type=int, default=200)
    p.add_argument("--no-pace", action="store_true")
    p.add_argument("--window", type=int, default=32)
    args = p.parse_args()
    if args.worker:
        asyncio.run(worker(args.frames, args.size, not args.no_pace, args.window))
        return
    figures: dict[str, Any] = {
        "bench": "ble",
        "reference_overhead_per_fragment": REFERENCE_OVERHEAD,
        "overhead": overhead_figures(),
        "throughput": [
            run_pair(185, args.frames, args.size, True),
            run_pair(23, max(1, args.frames // 4), args.size, True),
            run_pair(185, args.frames, args.size, False),
        ],
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
