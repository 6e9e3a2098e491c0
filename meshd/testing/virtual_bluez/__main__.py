"""Run a virtual BlueZ world outside Python tests, steered by one command per stdin line.

    python -m meshd.testing.virtual_bluez --node a --node b --link a,b,-60,185

prints one JSON line {"nodes": {name: {"address": ..., "bus": ...}}}; point a program at a
node with DBUS_SYSTEM_BUS_ADDRESS=<bus>. Then each stdin line is a command, answered by
one JSON line ({"ok": true} or {"ok": false, "error": ...}):

    link A B [RSSI] [MTU] [LOSS]    put A and B in range (or change the conditions)
    cut A B                         move them out of range
    power A on|off                  adapter power
    drop A B                        the connection between A and B dies
    restart A [SECONDS]             bluetoothd of A restarts (down for SECONDS)
    status                          nodes, links in range, connections
    quit                            stop (so does end of input or SIGTERM)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

from meshd.errors import InvalidArgument, MeshdError

from .world import World


def _link_args(text: str) -> tuple[str, str, dict[str, Any]]:
    parts = text.replace(",", " ").split()
    if len(parts) < 2 or len(parts) > 5:
        raise InvalidArgument("expected A B [RSSI] [MTU] [LOSS]", field="link")
    kwargs: dict[str, Any] = {}
    try:
        for name, value in zip(("rssi", "mtu", "loss"), parts[2:], strict=False):
            kwargs[name] = float(value) if name == "loss" else int(value)
    except ValueError as exc:
        raise InvalidArgument(f"not a number: {exc}", field="link") from None
    return parts[0], parts[1], kwargs


async def run_command(world: World, line: str) -> dict[str, Any]:
    """Apply one command line; the answer to print."""
    words = line.split()
    if not words:
        return {"ok": True}
    cmd, args = words[0], words[1:]
    try:
        if cmd == "link":
            a, b, kwargs = _link_args(" ".join(args))
            world.set_link(a, b, **kwargs)
        elif cmd == "cut" and len(args) == 2:
            world.cut_link(args[0], args[1])
        elif cmd == "power" and len(args) == 2 and args[1] in ("on", "off"):
            world.node(args[0])
            world.set_powered(args[0], args[1] == "on")
        elif cmd == "drop" and len(args) == 2:
            world.drop_connection(args[0], args[1])
        elif cmd == "restart" and len(args) in (1, 2):
            down = float(args[1]) if len(args) == 2 else 0.0
            await world.restart_bluez(args[0], down_for=down)
        elif cmd == "status" and not args:
            return {"ok": True, **_status(world)}
        else:
            return {"ok": False, "error": f"unknown or malformed command: {line.strip()!r}"}
    except (MeshdError, ValueError) as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True}


def _status(world: World) -> dict[str, Any]:
    air = world.air
    names = air.nodes
    links = [[a, b] for i, a in enumerate(names) for b in names[i + 1 :] if air.in_range(a, b)]
    return {
        "nodes": _nodes(world),
        "links": links,
        "connections": [list(c) for c in air.connections()],
    }


def _nodes(world: World) -> dict[str, Any]:
    return {
        name: {
            "address": node.address,
            "bus": node.bus_address,
            "powered": node.powered,
        }
        for name, node in world.nodes.items()
    }


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshd.testing.virtual_bluez")
    parser.add_argument("--node", action="append", default=[], help="a node name (repeat)")
    parser.add_argument("--link", action="append", default=[], help="A,B[,RSSI[,MTU[,LOSS]]]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scan-interval", type=float, default=0.1)
    opts = parser.parse_args(argv)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with World(seed=opts.seed, scan_interval=opts.scan_interval) as world:
        try:
            for name in opts.node:
                await world.add_node(name)
            for spec in opts.link:
                a, b, kwargs = _link_args(spec)
                world.set_link(a, b, **kwargs)
        except MeshdError as exc:
            print(json.dumps({"ok": False, "error": str(exc)}), flush=True)
            return 2
        print(json.dumps({"nodes": _nodes(world)}), flush=True)
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while not stop.is_set():
            line_task = asyncio.ensure_future(reader.readline())
            stop_task = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait(
                {line_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
            )
            stop_task.cancel()
            if line_task not in done:
                line_task.cancel()
                break
            raw = line_task.result()
            if not raw or raw.strip() == b"quit":
                break
            answer = await run_command(world, raw.decode(errors="replace"))
            print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
