"""``meshctl [--socket PATH] [--json] [--app ID] COMMAND``: the meshd admin CLI."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO

import grpc

from meshctl import commands
from meshctl import contacts as contacts_cmd
from meshctl import groups as groups_cmd
from meshctl import sessions as sessions_cmd
from meshd.paths import default_socket_path

Command = Callable[[commands.Context, argparse.Namespace], Awaitable[int]]
_COMMANDS: dict[str, Command] = {
    "status": commands.status,
    "peers": commands.peers,
    "routes": commands.routes,
    "send": commands.send,
    "watch": commands.watch,
    "history": commands.history,
    "identity": contacts_cmd.identity,
    "contacts": contacts_cmd.contacts,
    "connect": sessions_cmd.connect,
    "requests": sessions_cmd.requests,
    "policy": sessions_cmd.policy,
    "session": sessions_cmd.session,
    "groups": groups_cmd.groups,
}


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be 1..1000: {text!r}")
    return value


def _cursor(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a cursor: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Global options, accepted before or after the command name."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--socket", metavar="PATH", default=default,
                        help="API socket (default: $MESHD_SOCKET or the platform default)")
    parser.add_argument("--json", action="store_true",
                        default=argparse.SUPPRESS if suppress else False,
                        help="machine-readable output (JSON; JSON lines for watch)")
    parser.add_argument("--app", metavar="ID", default=argparse.SUPPRESS if suppress else "default",
                        help="application id to act as (default: default)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshctl", description="Control and inspect meshd.")
    _add_common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_common(p, suppress=True)
        return p

    command("status", "node identity, uptime, counters and transports")
    command("peers", "neighbours (directly linked nodes)")
    command("routes", "known paths to other nodes")
    send = command("send", "send a text message to a node address")
    send.add_argument("address", metavar="ADDRESS", help="destination node address")
    send.add_argument("text", metavar="TEXT", help="message text (UTF-8)")
    send.add_argument("--wait", action="store_true",
                      help="exit 0 only once the destination has acknowledged")  # fmt: skip
    send.add_argument("--timeout", type=_positive_float, default=30.0, metavar="SECONDS",
                      help="with --wait: give up after this long (default 30)")  # fmt: skip
    watch = command("watch", "print events as they happen")
    watch.add_argument("--from", dest="from_cursor", type=_cursor, metavar="CURSOR",
                       help="replay stored events after this cursor first")  # fmt: skip
    hist = command("history", "message history of this app, newest first")
    hist.add_argument("--peer", metavar="ADDR", help="only messages to or from this node")
    hist.add_argument("--limit", type=_limit, default=50, metavar="N", help="1..1000 (default 50)")
    contacts_cmd.add_parsers(command, lambda p: _add_common(p, suppress=True))
    sessions_cmd.add_parsers(command, lambda p: _add_common(p, suppress=True))
    groups_cmd.add_parsers(command, lambda p: _add_common(p, suppress=True))
    return parser


def socket_path(args: argparse.Namespace) -> str:
    """``--socket``, else the rule in ``meshd.paths`` (MESHD_SOCKET, root, XDG runtime dir)."""
    return str(args.socket) if args.socket else str(default_socket_path())


def _not_running(path: str) -> commands.CommandFailed:
    return commands.CommandFailed(f"cannot connect to meshd at {path}: is meshd running?")


async def run(args: argparse.Namespace, path: str, out: TextIO) -> int:
    not_running = _not_running(path)
    async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), 5.0)
        except TimeoutError:
            raise not_running from None
        ctx = commands.Context(channel, args, out)
        try:
            return await _COMMANDS[args.command](ctx, args)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise commands.CommandFailed(
                    f"lost the connection to meshd at {path}: {exc.details()}"
                ) from None
            raise commands.CommandFailed(exc.details() or exc.code().name.lower()) from None


def _probe(path: str) -> None:
    """Fail fast with a clear line when nobody listens (grpc would retry for seconds)."""
    if not os.path.exists(path):
        raise _not_running(path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except PermissionError:
        raise commands.CommandFailed(
            f"permission denied on {path}: are you in the meshd group?"
        ) from None
    except OSError:
        raise _not_running(path) from None
    finally:
        probe.close()


async def amain(
    argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None
) -> int:
    """Parse ``argv`` and run the command on the current event loop; returns the exit status."""
    args = build_parser().parse_args(argv)
    stdout, stderr = out or sys.stdout, err or sys.stderr
    path = socket_path(args)
    try:
        _probe(path)
        return await run(args, path, stdout)
    except commands.CommandFailed as exc:
        print(f"meshctl: {exc}", file=stderr, flush=True)
        return 1
    except BrokenPipeError:
        return 0  # `meshctl watch | head`


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 ok, 1 failure (one line on stderr), 2 usage, 130 interrupted."""
    try:
        return asyncio.run(amain(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
