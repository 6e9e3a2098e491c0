"""A tiny chat over meshd: prints incoming messages and sends each line you type.

    python3 examples/chat.py PEER_ADDRESS [--socket PATH] [--app chat]

The last event cursor is kept in ``~/.cache/meshd-chat.cursor`` so that messages that
arrived while the program was not running are shown on the next start.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from meshd_client import DeliveryFailed, MeshClient, MeshClientError

CURSOR_FILE = Path.home() / ".cache" / "meshd-chat.cursor"


def load_cursor() -> int | None:
    try:
        return int(CURSOR_FILE.read_text().strip())
    except (OSError, ValueError):
        return None


def save_cursor(cursor: int) -> None:
    CURSOR_FILE.parent.mkdir(parents=True, exist_ok=True)
    CURSOR_FILE.write_text(str(cursor))


async def receive(client: MeshClient) -> None:
    async for event in client.events(after_cursor=load_cursor()):
        if event.WhichOneof("kind") == "message_received":
            m = event.message_received.message
            print(f"\r<{m.peer[:8]}> {m.payload.decode('utf-8', 'replace')}")
        save_cursor(event.cursor)


async def send_lines(client: MeshClient, peer: str) -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        text = line.rstrip("\n")
        if not text:
            continue
        message_id = await client.send(peer, text)
        try:
            await client.wait_delivered(message_id, 60)
            print(f"  (delivered {message_id[:8]})")
        except DeliveryFailed as exc:
            print(f"  (failed: {exc.reason})")
        except TimeoutError:
            print("  (not yet delivered; meshd keeps trying)")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("peer", help="the other node's address")
    parser.add_argument("--socket", help="meshd's API socket (default: meshd's rule)")
    parser.add_argument("--app", default="chat", help="application id (default: chat)")
    args = parser.parse_args()
    try:
        client = await MeshClient.connect(args.socket, app=args.app)
    except MeshClientError as exc:
        print(f"chat: {exc}", file=sys.stderr)
        return 1
    async with client:
        status = await client.status()
        print(f"this node: {status.status.address}  (type a line and press enter)")
        receiver = asyncio.create_task(receive(client))
        try:
            await send_lines(client, args.peer)
        finally:
            receiver.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
