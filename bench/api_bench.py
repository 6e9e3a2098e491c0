"""What the credential relay and the API layer cost, against a bare grpc.aio server.

Three servers on Unix sockets, each in its own process, driven by a client process
(concurrent and sequential unary calls, 1 KiB payload):
  bare   - a grpc.aio echo handler (the ceiling; REFERENCE.md: ~6,300/s with 8 concurrent)
  relay  - the same echo server behind meshd's SO_PEERCRED relay (meshd.api.relay)
  api    - meshd's full API server (relay, interceptor, caller scoping), GetStatus on a
           minimal node: the per-call cost an app pays before the node does any work
  e2e    - two real Nodes (SQLite stores, one in-memory link, one process) each serving
           the API: 1 KiB messages sent through A's API (16 in flight), counted on B's
           Subscribe stream; then one at a time for latency (send -> B's stream, and
           send -> DELIVERED on A's stream). No TCP: the daemon bench measures that.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import queue
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import structlog

from meshd.address import NodeAddress
from meshd.node_api import NodeStatus

_ECHO = "/bench.Echo/Call"
PAYLOAD = b"x" * 1024


def _identity(b: bytes) -> bytes:
    return b


async def _echo_server(path: str) -> grpc.aio.Server:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {"Call": grpc.unary_unary_rpc_method_handler(echo, _identity, _identity)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    return server


class _MinimalNode:
    address = NodeAddress(bytes(16))

    def status(self) -> NodeStatus:
        return NodeStatus(self.address, "bench", 0.0, 0.0, 0, 0, 0, "/")


def _write(path: str, text: str) -> None:
    Path(path).write_text(text)


def _read(path: str) -> str:
    return Path(path).read_text()


async def _serve_pair(path: str, ready: Any, stop: Any) -> None:
    from meshd.api.server import serve
    from meshd.crypto.identity import Identity
    from meshd.node import Node
    from meshd.testing.memtransport import MemoryTransport, connect

    base = os.path.dirname(path)
    nodes, servers, transports = [], [], []
    for name in ("a", "b"):
        t = MemoryTransport()

        def factory(identity: Identity, t: MemoryTransport = t) -> list[MemoryTransport]:
            t.bind_identity(identity.public)
            return [t]

        nodes.append(Node.open(Path(base) / name, factory))
        transports.append(t)
    connect(transports[0], transports[1])
    for node in nodes:
        await node.start()
    for node, name in zip(nodes, ("a", "b"), strict=True):
        servers.append(await serve(node, os.path.join(base, f"{name}.sock")))
    _write(path, nodes[1].address.text)  # where to send
    ready.set()
    await asyncio.to_thread(stop.wait)
    for server in servers:
        await server.stop(0.1)
    for node in nodes:
        await node.stop()


async def _serve(kind: str, path: str, ready: Any, stop: Any) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    if kind == "e2e":
        await _serve_pair(path, ready, stop)
        return
    if kind == "bare":
        server = await _echo_server(path)
        closer: Any = server.stop
    elif kind == "relay":
        from meshd.api.relay import CredentialRegistry, CredentialRelay
        from meshd.api.server import _listen, _make_private_dir

        private = _make_private_dir(os.path.dirname(path))
        server = await _echo_server(os.path.join(private, "grpc.sock"))
        relay = CredentialRelay(
            CredentialRegistry(), os.path.join(private, "grpc.sock"), private,
            structlog.get_logger(),
        )  # fmt: skip
        await relay.start(_listen(path, private, "meshd", structlog.get_logger()))

        async def closer(grace: float) -> None:
            await relay.stop()
            await server.stop(grace)
    else:
        from meshd.api.server import serve

        api = await serve(_MinimalNode(), path)  # type: ignore[arg-type]
        closer = api.stop
    ready.set()
    await asyncio.to_thread(stop.wait)
    await closer(0.1)


def _server_proc(kind: str, path: str, ready: Any, stop: Any) -> None:
    asyncio.run(_serve(kind, path, ready, stop))


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads (proc(5): stat fields 14, 15)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(
    kind: str, path: str, seconds: float, concurrency: int, server_pid: int
) -> tuple[float, float]:
    """(calls per second, server CPU microseconds per call)."""
    from meshd.api.v1 import node_pb2, node_pb2_grpc

    async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
        if kind == "api":
            stub = node_pb2_grpc.NodeServiceStub(channel)
            req = node_pb2.GetStatusRequest()

            async def call() -> None:
                await stub.GetStatus(req)
        else:
            method = channel.unary_unary(_ECHO, _identity, _identity)

            async def call() -> None:
                await method(PAYLOAD)

        for _ in range(50):  # warm up
            await call()
        count = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                await call()
                count += 1

        start, cpu0 = time.perf_counter(), _cpu_seconds(server_pid)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, cpu = time.perf_counter() - start, _cpu_seconds(server_pid) - cpu0
        return count / elapsed, cpu / count * 1e6


def _client_proc(
    kind: str, path: str, seconds: float, conc: int, server_pid: int, out: Any
) -> None:
    out.put(asyncio.run(_drive(kind, path, seconds, conc, server_pid)))


async def _e2e(dst_file: str, messages: int, samples: int) -> dict[str, float]:
    from meshd.api.v1 import messaging_pb2 as mpb
    from meshd.api.v1 import messaging_pb2_grpc as mgrpc

    base = os.path.dirname(dst_file)
    dst = _read(dst_file)
    md = (("meshd-app", "bench"),)
    async with grpc.aio.insecure_channel(f"unix:{base}/a.sock") as ca, \
            grpc.aio.insecure_channel(f"unix:{base}/b.sock") as cb:  # fmt: skip
        a, b = mgrpc.MessagingServiceStub(ca), mgrpc.MessagingServiceStub(cb)
        inbox = b.Subscribe(mpb.SubscribeRequest(), metadata=md)
        await inbox.wait_for_connection()
        received: dict[str, float] = {}
        arrived = asyncio.Event()

        async def reader() -> None:
            async for ev in inbox:
                if ev.WhichOneof("kind") == "message_received":
                    received[ev.message_received.message.message_id] = time.perf_counter()
                    arrived.set()

        async def until_received(n: int) -> None:
            while len(received) < n:
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 60)

        read_task = asyncio.create_task(reader())
        left = [messages]
        req = mpb.SendMessageRequest(dst=dst, payload=PAYLOAD)
        start = time.perf_counter()

        async def sender() -> None:
            while left[0] > 0:
                left[0] -= 1
                await a.SendMessage(req, metadata=md)

        await asyncio.gather(*(sender() for _ in range(16)))
        await until_received(messages)
        throughput = messages / (time.perf_counter() - start)

        # Latency at low load: one message at a time.
        outbox = a.Subscribe(mpb.SubscribeRequest(), metadata=md)
        rx_lat, ack_lat = [], []
        for i in range(samples):
            t0 = time.perf_counter()
            sent = await a.SendMessage(req, metadata=md)
            async for ev in outbox:
                d = ev.delivery_state
                if (ev.WhichOneof("kind") == "delivery_state" and d.message_id == sent.message_id
                        and d.state == mpb.DELIVERY_STATE_DELIVERED):  # fmt: skip
                    ack_lat.append(time.perf_counter() - t0)
                    break
            await until_received(messages + i + 1)
            rx_lat.append(received[sent.message_id] - t0)
        outbox.cancel()
        read_task.cancel()
        rx_lat.sort()
        ack_lat.sort()
        return {
            "msgs_per_s": round(throughput),
            "rx_p50_ms": round(rx_lat[len(rx_lat) // 2] * 1000, 2),
            "delivered_p50_ms": round(ack_lat[len(ack_lat) // 2] * 1000, 2),
        }


def _e2e_proc(path: str, messages: int, samples: int, out: Any) -> None:
    out.put(asyncio.run(_e2e(path, messages, samples)))


def measure_e2e(messages: int, samples: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        path = os.path.join(tmp, "dst")
        ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
        server = ctx.Process(target=_server_proc, args=("e2e", path, ready, stop))
        server.start()
        try:
            if not ready.wait(60):
                raise RuntimeError("e2e nodes did not start")
            client = ctx.Process(target=_e2e_proc, args=(path, messages, samples, out))
            client.start()
            result: dict[str, float] = _result(out, client, 300)
            client.join()
        finally:
            stop.set()
            server.join(10)
            if server.is_alive():
                server.kill()
    return result


def _result(out: Any, proc: Any, timeout: float) -> Any:
    """The child's answer; fail at once if it died instead of waiting out the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return out.get(timeout=0.5)
        except queue.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"bench child exited with {proc.exitcode}") from None
    raise RuntimeError("bench child timed out")


def measure_unary(seconds: float, rounds: int) -> dict[str, dict[str, float]]:
    """Per server: best call rate of ``rounds`` interleaved runs (the machine is shared;
    interleaving keeps one noisy moment from favouring one server) and the server's
    median CPU time per call, which contention hardly moves."""
    ctx = mp.get_context("spawn")
    kinds = ("bare", "relay", "api")
    rates: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        stop, out = ctx.Event(), ctx.Queue()
        servers, paths, pids = [], {}, {}
        try:
            for kind in kinds:
                paths[kind] = os.path.join(tmp, f"{kind}.sock")
                ready = ctx.Event()
                server = ctx.Process(target=_server_proc, args=(kind, paths[kind], ready, stop))
                server.start()
                servers.append(server)
                pids[kind] = server.pid
                if not ready.wait(30):
                    raise RuntimeError(f"{kind} server did not start")
            for _ in range(rounds):
                for kind in kinds:
                    for label, conc in (("seq", 1), ("c8", 8)):
                        args = (kind, paths[kind], seconds, conc, pids[kind], out)
                        client = ctx.Process(target=_client_proc, args=args)
                        client.start()
                        rate, cpu_us = _result(out, client, seconds + 60)
                        client.join()
                        rates.setdefault((kind, label), []).append(rate)
                        cpus.setdefault((kind, label), []).append(cpu_us)
        finally:
            stop.set()
            for server in servers:
                server.join(10)
                if server.is_alive():
                    server.kill()
    return {
        kind: {
            "seq": round(max(rates[kind, "seq"])),
            "c8": round(max(rates[kind, "c8"])),
            "cpu_us_c8": round(statistics.median(cpus[kind, "c8"])),
        }
        for kind in kinds
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved; best is kept")
    parser.add_argument("--messages", type=int, default=2000, help="e2e throughput run")
    parser.add_argument("--samples", type=int, default=50, help="e2e latency samples")
    args = parser.parse_args()
    res = measure_unary(args.seconds, args.rounds)
    e2e = measure_e2e(args.messages, args.samples)
    print(json.dumps({
        "e2e_memory_link": e2e,
        "e2e_vs_bare_c8": round(e2e["msgs_per_s"] / res["bare"]["c8"], 3),
        "bench": "api",
        "unary_1k_seq_per_s": {k: v["seq"] for k, v in res.items()},
        "unary_1k_c8_per_s": {k: v["c8"] for k, v in res.items()},
        "server_cpu_us_per_call_c8": {k: v["cpu_us_c8"] for k, v in res.items()},
        "relay_vs_bare_c8": round(res["relay"]["c8"] / res["bare"]["c8"], 3),
        "api_getstatus_vs_bare_c8": round(res["api"]["c8"] / res["bare"]["c8"], 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
