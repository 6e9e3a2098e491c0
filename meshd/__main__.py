"""The ``meshd`` command: run one mesh node in the foreground until SIGTERM/SIGINT.

Exit codes: 0 clean shutdown, 1 runtime failure (store, socket, lock), 2 bad config.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import structlog

from meshd.config import Config, load_config
from meshd.crypto.identity import Identity
from meshd.e2e.groups_events import GroupConfig
from meshd.errors import ConfigError, MeshdError
from meshd.logging import configure_process_logging
from meshd.node import Node
from meshd.sdnotify import SdNotifier
from meshd.transports.base import Transport

_STATUS_INTERVAL_S = 30.0
_BATTERY_INTERVAL_S = 60.0
POWER_SUPPLY = Path("/sys/class/power_supply")


def read_battery(root: Path = POWER_SUPPLY) -> tuple[int, bool] | None:
    """(level %, charging) of the first system battery in sysfs; None without one
    (mains power: the router then treats this node as unconstrained)."""
    try:
        supplies = sorted(root.iterdir())
    except OSError:
        return None
    for supply in supplies:
        try:
            if (supply / "type").read_text().strip() != "Battery":
                continue
            if (supply / "scope").exists() and (supply / "scope").read_text().strip() != "System":
                continue  # a mouse or headset battery
            level = int((supply / "capacity").read_text().strip())
            status = (supply / "status").read_text().strip()
        except (OSError, ValueError):
            continue
        return max(0, min(100, level)), status in ("Charging", "Full")
    return None


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
    return [inet, *build_ble(cfg, identity, log)]


def build_ble(cfg: Config, identity: Identity, log: Any) -> list[Transport]:
    """The BLE transport unless ``--no-ble``; without bleak/bless it is left out (said
    once). Without an adapter it starts UNAVAILABLE and says so once (docs/ble.md)."""
    if cfg.ble is False:
        return []
    try:
        from meshd.transports.ble import BleConfig, BleTransport
    except Exception as exc:  # the `ble` extra (bleak, bless, dbus-fast) is not installed
        say = log.error if cfg.ble else log.info
        say("transport_unavailable", transport="ble", error=repr(exc))
        return []
    return [
        BleTransport(
            identity,
            config=BleConfig(adapter=cfg.ble_adapter, max_links=cfg.ble_max_links),
            logger=log.bind(node=identity.address.short, transport="ble"),
        )
    ]


def _ble_summary(node: Node) -> Any:
    """What the BLE advertisement says about this node: (battery, charging, cluster id)."""

    def summary() -> tuple[int | None, bool, int | None]:
        try:
            router = node.core.router
        except MeshdError:  # not started yet
            return None, False, None
        return router.own_battery, bool(router.own.charging), router.own.cluster_id or None

    return summary


async def _start_api(node: Node, cfg: Config, log: Any) -> Any:
    try:
        from meshd.api.server import serve
    except Exception as exc:
        log.error("api_unavailable", error=repr(exc))
        return None
    return await serve(node, str(cfg.socket))


async def _keepalive(node: Node, notifier: SdNotifier, *, poll_battery: bool) -> None:
    """WATCHDOG=1 at half of $WATCHDOG_USEC, a STATUS line every 30 s, and the system
    battery every 60 s (unless --battery fixed it)."""
    interval = notifier.watchdog_interval
    step = min(interval, _STATUS_INTERVAL_S) if interval else _STATUS_INTERVAL_S
    since_status = 0.0
    since_battery = _BATTERY_INTERVAL_S
    last_battery: tuple[int, bool] | None = None
    while True:
        if poll_battery and since_battery >= _BATTERY_INTERVAL_S:
            since_battery = 0.0
            battery = read_battery()
            if battery is not None and battery != last_battery:
                try:
                    node.set_battery(battery[0], charging=battery[1])
                    last_battery = battery
                except MeshdError as exc:
                    node.log.warning("battery_not_set", level=battery[0], error=str(exc))
        await asyncio.sleep(step)
        since_status += step
        since_battery += step
        if interval:
            notifier.notify(WATCHDOG=1)
        if since_status >= _STATUS_INTERVAL_S:
            since_status = 0.0
            notifier.notify(STATUS=_status_line(node))


def _status_line(node: Node) -> str:
    try:
        st = node.status()
    except MeshdError as exc:  # the watchdog loop must keep running
        return f"{node.address.short}: status unavailable: {exc}"
    return f"{st.address.short}: {st.neighbours} neighbours, {st.routes} routes, outbox {st.outbox}"


async def run(cfg: Config, *, notifier: SdNotifier | None = None) -> int:
    """Start the node and the API, signal READY, wait for SIGTERM/SIGINT, shut down."""
    log = structlog.get_logger("meshd")
    notifier = notifier or SdNotifier()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    built: list[Transport] = []

    def transports(identity: Identity) -> list[Transport]:
        built.extend(build_transports(cfg, identity, log))
        return built

    node = Node.open(
        cfg.state_dir,
        transports=transports,
        battery=cfg.battery,
        accept_from=cfg.accept_from,
        logger=log,
    )
    node.group_config = GroupConfig(update_interval_s=cfg.group_update_interval_s)
    node.session_update_interval = cfg.session_update_interval_s  # read by node.start()
    for transport in built:
        set_summary = getattr(transport, "set_summary_source", None)
        if set_summary is not None:
            set_summary(_ble_summary(node))
    server: Any = None
    keepalive: asyncio.Task[None] | None = None
    try:
        await node.start()
        server = await _start_api(node, cfg, node.log)
        notifier.notify(READY=1, STATUS=_status_line(node))
        node.log.info("ready", socket=str(cfg.socket), state_dir=str(cfg.state_dir))
        keepalive = asyncio.create_task(
            _keepalive(node, notifier, poll_battery=cfg.battery is None)
        )
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


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run the daemon on uvloop (libuv), unless MESHD_EVENT_LOOP=asyncio. Measured with
    two daemons (1 KiB messages, 16 unary callers, alternating runs): 1-hop latency p50
    -0.3..-0.7 ms and ~10 % less CPU per message; the sockets (the API relay, the links)
    and the loop's own bookkeeping are most of what it saves."""
    if os.environ.get("MESHD_EVENT_LOOP", "uvloop") != "asyncio":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = load_config(argv)
    except ConfigError as exc:
        print(f"meshd: config error: {exc}", file=sys.stderr)
        return 2
    configure_process_logging(level=cfg.log_level, fmt=cfg.log_format)
    try:
        return _run_loop(run(cfg))
    except MeshdError as exc:
        print(f"meshd: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a path we cannot create or bind: one line, not a traceback
        where = f": {exc.filename}" if exc.filename else ""
        print(f"meshd: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130


if __name__ == "__main__":
    sys.exit(main())
