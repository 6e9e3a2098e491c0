"""End-to-end encryption benchmark (issue 4): real daemons in network namespaces, one JSON
line.

    sudo python3 bench/e2e_bench.py [--samples 3]

Topology: a star around the relay ``r``: ``a - r - {c1..cN, f1..fN}``; every peer of
``a`` is 2 hops away and nothing forwards IP. Once every link is up (measured from READY,
not included), for each sample:

- ``connection_request_ms``: ``a`` calls Connect(cI, text) (cI runs with
  ``accept_from = contacts``); ``cI`` accepts as soon as its Subscribe stream shows the
  request; the figure is Connect → the first message's ``message_received`` on cI, i.e.
  both round trips plus the accept (target <= 1000 ms). ``after_accept_ms`` is the part
  from the AcceptRequest call.
- ``first_message_fresh_peer_ms``: SendMessage a → fI with no session and no key package
  cached at ``a`` (automatic key exchange: KP_REQUEST, route discovery, SESSION_INIT) →
  ``message_received`` on fI.
- ``established_session_ms``: the same message to fI again, now in the established
  session (the baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

if __package__ in (None, ""):  # run as a script: make this checkout's meshd importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshd.api.v1 import messaging_pb2 as mpb
from meshd.api.v1 import messaging_pb2_grpc as mgrpc
from meshd.api.v1 import node_pb2 as npb
from meshd.api.v1 import node_pb2_grpc as ngrpc
from meshd.api.v1 import sessions_pb2 as spb
from meshd.api.v1 import sessions_pb2_grpc as sgrpc
from meshd.testing.netns import NetnsLab, unavailable_reason

APP = (("meshd-app", "bench"),)
TEXT = b"x" * 200


class Node:
    def __init__(self, lab: NetnsLab, name: str) -> None:
        self.name = name
        self.channel = grpc.aio.insecure_channel(f"unix:{lab.daemon(name).socket_path}")
        self.node = ngrpc.NodeServiceStub(self.channel)
        self.msg = mgrpc.MessagingServiceStub(self.channel)
        self.sessions = sgrpc.SessionsServiceStub(self.channel)
        self.address = ""

    async def open(self) -> None:
        st = await self.node.GetStatus(npb.GetStatusRequest(), metadata=APP, timeout=10)
        self.address = st.status.address

    async def neighbours(self) -> int:
        resp = await self.node.ListNeighbours(npb.ListNeighboursRequest(), metadata=APP)
        return len(resp.neighbours)


Match = Callable[[mpb.Event], bool]


async def _first_event(node: Node, match: Match, within: float, started: asyncio.Event) -> float:
    """perf_counter() when ``node``'s Subscribe stream shows an event ``match`` accepts
    (the stored backlog replays first: matches are unique, so it cannot fool us)."""
    stream = node.msg.Subscribe(mpb.SubscribeRequest(), metadata=APP, timeout=within)
    try:
        async for ev in stream:
            started.set()
            if match(ev):
                return time.perf_counter()
    finally:
        stream.cancel()
    raise RuntimeError(f"{node.name}: no matching event")


async def _watch(node: Node, match: Match, within: float = 30) -> asyncio.Task[float]:
    started = asyncio.Event()
    task = asyncio.ensure_future(_first_event(node, match, within, started))
    # Every node has stored events (neighbour_up...) by now: the stream is open once the
    # first one arrives.
    await asyncio.wait_for(started.wait(), 10)
    return task


def _received(payload: bytes) -> Match:
    return lambda ev: ev.WhichOneof("kind") == "message_received" and \
        ev.message_received.message.payload == payload


async def connection_request(a: Node, c: Node) -> tuple[float, float]:
    def request(ev: mpb.Event) -> bool:
        return (ev.WhichOneof("kind") == "session" and ev.session.peer == a.address
                and ev.session.kind == mpb.SESSION_EVENT_KIND_CONNECTION_REQUEST)

    text = TEXT + os.urandom(8)
    request_seen = await _watch(c, request)
    received = await _watch(c, _received(text))
    t0 = time.perf_counter()
    await a.sessions.Connect(spb.ConnectRequest(address=c.address, text=text), metadata=APP)
    await request_seen
    t_accept = time.perf_counter()
    await c.sessions.AcceptRequest(spb.PeerRequest(address=a.address), metadata=APP)
    t1 = await received
    return (t1 - t0) * 1000, (t1 - t_accept) * 1000


async def one_message(a: Node, f: Node) -> float:
    text = TEXT + os.urandom(8)
    received = await _watch(f, _received(text))
    t0 = time.perf_counter()
    await a.msg.SendMessage(mpb.SendMessageRequest(dst=f.address, payload=text), metadata=APP)
    return (await received - t0) * 1000


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
        "n": len(values),
    }


async def run(samples: int, tmp: Path) -> dict[str, Any]:
    reason = unavailable_reason()
    if reason is not None:
        return {"skipped": reason}
    cs = [f"c{i}" for i in range(samples)]
    fs = [f"f{i}" for i in range(samples)]
    names = ["a", "r", *cs, *fs]
    links = [("a", "r"), *[("r", n) for n in cs + fs]]
    out: dict[str, Any] = {"topology": f"a - r - {{{len(cs)} contacts-only, {len(fs)} open}}"}
    with NetnsLab.create(names, links, tmp / "lab") as lab:
        for n in names:
            lab.start(n, *(("--accept-from", "contacts") if n in cs else ()), wait_ready=False)
        for n in names:
            lab.daemon(n).wait_ready(timeout=60)
        nodes = {n: Node(lab, n) for n in names}
        try:
            for node in nodes.values():
                await node.open()
            expect = {n: 1 for n in names} | {"r": len(names) - 1}
            t_ready = time.perf_counter()
            while True:  # every link up (not part of any figure)
                counts = {n: await nodes[n].neighbours() for n in names}
                if all(counts[n] >= expect[n] for n in names):
                    break
                if time.perf_counter() - t_ready > 90:
                    raise RuntimeError(f"links not up: {counts}")
                await asyncio.sleep(0.2)
            out["links_up_s"] = round(time.perf_counter() - t_ready, 2)
            a = nodes["a"]
            req, after = [], []
            for c in cs:
                total, accepted = await connection_request(a, nodes[c])
                req.append(total)
                after.append(accepted)
            fresh = [await one_message(a, nodes[f]) for f in fs]
            established = [await one_message(a, nodes[f]) for f in fs for _ in range(3)]
            out["connection_request_ms"] = _stats(req)
            out["after_accept_ms"] = _stats(after)
            out["first_message_fresh_peer_ms"] = _stats(fresh)
            out["established_session_ms"] = _stats(established)
            p50 = out["connection_request_ms"]["p50"]
            out["check"] = {"connection_request_p50_ms": p50, "target": "<= 1000",
                            "ok": p50 <= 1000}  # fmt: skip
        finally:
            for node in nodes.values():
                await node.channel.close(None)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--samples", type=int, default=3, help="peers per figure (2 hops)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="e2e-bench-") as tmp:
        try:
            result = asyncio.run(run(max(1, args.samples), Path(tmp)))
        except Exception as exc:  # one JSON line whatever happens
            result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps({"bench": "e2e", **result}, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
