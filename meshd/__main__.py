"""The ``meshd`` command: run one mesh node in the foreground until SIGTERM/SIGINT.

Exit codes: 0 clean shutdown, 1 runtime failure (store, socket, lock), 2 bad config.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from typing import Any

import structlog

from meshd.config import Config, load_config
from meshd.crypto.identity import Identity
from meshd.errors import ConfigError, MeshdError
from meshd.logging import configure_process_logging
from meshd.node import Node
from meshd.sdnotify import SdNotifier
from meshd.transports.base import Transport

_STATUS_INTERVAL_S = 30.0


def build_transports(cfg: Config, identity: Identity, log: Any) -> list[Transport]:
    """The configured transports; one that cannot be built is logged and left out."""
    try:
        from meshd.transports.inet import InetTransport
    except Exception as exc:  # the inet transport may be absent or broken in this build
        log.error("transport_unavailable", transport="inet", error=repr(exc))
        return []
    try:
        inet = InetTransport(
            identity,
            listen=[(hp.host, hp.port) for hp in cfg.listen],
            peers=[(hp.host, hp.port) for hp in cfg.peers],
            discovery=cfg.discovery,
            logger=log.bind(node=identity.address.short, transport="inet"),
        )
    except MeshdError:
        raise
    except Exception as exc:
        log.error("transport_unavailable", transport="inet", error=repr(exc))
        return []
    return [inet]


async def _start_api(node: Node, cfg: Config, log: Any) -> Any:
    try:
        from meshd.api.server import serve
    except Exception as exc:
        log.error("api_unavailable", error=repr(exc))
        return None
    return await serve(node, str(cfg.socket))


async def _keepalive(node: Node, notifier: SdNotifier) -> None:
    """WATCHDOG=1 at half of $WATCHDOG_USEC, and a STATUS line every 30 s."""
    interval = notifier.watchdog_interval
    step = min(interval, _STATUS_INTERVAL_S) if interval else _STATUS_INTERVAL_S
    since_status = 0.0
    while True:
        await asyncio.sleep(step)
        since_status += step
        if interval:
            notifier.notify(WATCHDOG=1)
        if since_status >= _STATUS_INTERVAL_S:
            since_status = 0.0
            notifier.notify(STATUS=_status_line(node))


def _status_line(node: Node) -> str:
    st = node.status()
    return f"{st.address.short}: {st.neighbours} neighbours, {st.routes} routes, outbox {st.outbox}"


async def run(cfg: Config, *, notifier: SdNotifier | None = None) -> int:
    """Start the node and the API, signal READY, wait for SIGTERM/SIGINT, shut down."""
    log = structlog.get_logger("meshd")
    notifier = notifier or SdNotifier()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node = Node.open(
        cfg.state_dir,
        transports=lambda identity: build_transports(cfg, identity, log),
        battery=cfg.battery,
        logger=log,
    )
    server: Any = None
    keepalive: asyncio.Task[None] | None = None
    try:
        await node.start()
        server = await _start_api(node, cfg, node.log)
        notifier.notify(READY=1, STATUS=_status_line(node))
        node.log.info("ready", socket=str(cfg.socket), state_dir=str(cfg.state_dir))
        keepalive = asyncio.create_task(_keepalive(node, notifier))
        await stop.wait()
        node.log.info("stopping")
        notifier.notify(STOPPING=1, STATUS="stopping")
    finally:
        if keepalive is not None:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
        if server is not None:
            await server.stop(1.0)
        await node.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = load_config(argv)
    except ConfigError as exc:
        print(f"meshd: config error: {exc}", file=sys.stderr)
        return 2
    configure_process_logging(level=cfg.log_level, fmt=cfg.log_format)
    try:
        return asyncio.run(run(cfg))
    except MeshdError as exc:
        print(f"meshd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130


if __name__ == "__main__":
    sys.exit(main())
