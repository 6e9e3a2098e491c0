"""What the credential relay and the API layer cost, against a bare grpc.aio server.

Three servers on Unix sockets, each in its own process, driven by a client process
(concurrent and sequential unary calls, 1 KiB payload):
  bare   - a grpc.aio echo handler (the ceiling; REFERENCE.md: ~6,300/s with 8 concurrent)
  relay  - the same echo server behind meshd's SO_PEERCRED relay (meshd.api.relay)
  api    - meshd's full API server (relay, interceptor, caller scoping), GetStatus on a
           minimal node: the per-call cost an app pays before the node does any work
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import tempfile
import time
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


async def _serve(kind: str, path: str, ready: Any, stop: Any) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
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


async def _drive(kind: str, path: str, seconds: float, concurrency: int) -> float:
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

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - start)


def _client_proc(kind: str, path: str, seconds: float, conc: int, out: Any) -> None:
    out.put(asyncio.run(_drive(kind, path, seconds, conc)))


def measure(kind: str, seconds: float) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="meshd-bench-") as tmp:
        path = os.path.join(tmp, f"{kind}.sock")
        ready, stop, out = ctx.Event(), ctx.Event(), ctx.Queue()
        server = ctx.Process(target=_server_proc, args=(kind, path, ready, stop))
        server.start()
        try:
            if not ready.wait(30):
                raise RuntimeError(f"{kind} server did not start")
            rates = {}
            for label, conc in (("seq", 1), ("c8", 8)):
                client = ctx.Process(target=_client_proc, args=(kind, path, seconds, conc, out))
                client.start()
                rates[label] = round(out.get(timeout=seconds + 60))
                client.join()
        finally:
            stop.set()
            server.join(10)
            if server.is_alive():
                server.kill()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = parser.parse_args()
    res = {kind: measure(kind, args.seconds) for kind in ("bare", "relay", "api")}
    print(json.dumps({
        "bench": "api",
        "unary_1k_seq_per_s": {k: v["seq"] for k, v in res.items()},
        "unary_1k_c8_per_s": {k: v["c8"] for k, v in res.items()},
        "relay_vs_bare_c8": round(res["relay"]["c8"] / res["bare"]["c8"], 3),
        "api_getstatus_vs_bare_c8": round(res["api"]["c8"] / res["bare"]["c8"], 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
