"""meshd settings: command line, optional TOML file (``--config``), environment, defaults.

Precedence, highest first: command-line flag, environment (``MESHD_SOCKET``,
``STATE_DIRECTORY``), config file, built-in default. Every flag has a config key:

    state_dir = "/var/lib/meshd"
    socket = "/run/meshd/meshd.sock"
    listen = ["[::]:4717"]
    peers = ["192.0.2.7:4717"]
    discovery = true
    log_level = "info"          # debug | info | warning | error
    log_format = "auto"         # auto (console on a TTY, else json) | console | json
    battery = 80                # fixed battery level 0..100 (tests, desktops)
    accept_from = "anyone"      # who may open a 1:1 session: anyone | contacts
    group_update_interval = 86400  # seconds between own MLS group self-updates (docs/groups.md)
    session_update_interval = 86400  # the same for each 1:1 session (docs/wire-format.md)

    [ble]                       # Bluetooth LE transport (docs/ble.md)
    enabled = true              # default: on when an adapter exists (else logged once)
    adapter = "hci0"
    max_links = 4               # BLE links in both roles together, 1..15

Unknown keys and bad values raise ``ConfigError`` naming the key.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshd import __version__
from meshd.errors import ConfigError
from meshd.paths import SOCKET_ENV, default_socket_path, default_state_dir

DEFAULT_PORT = 4717
DEFAULT_LISTEN = f"[::]:{DEFAULT_PORT}"
# Post-compromise security: each member's own MLS self-update (docs/groups.md).
GROUP_UPDATE_INTERVAL_DEFAULT_S = 24 * 3600.0
GROUP_UPDATE_INTERVAL_MAX_S = 365 * 24 * 3600.0
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "console", "json")
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class HostPort:
    """A ``HOST:PORT`` endpoint; IPv6 hosts are written ``[addr]:port``."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Config:
    state_dir: Path
    socket: Path
    listen: tuple[HostPort, ...] = (HostPort("::", DEFAULT_PORT),)
    peers: tuple[HostPort, ...] = ()
    discovery: bool = True
    log_level: str = "info"
    log_format: str = "auto"
    battery: int | None = None
    accept_from: str = "anyone"  # meshd/e2e/requests.py
    group_update_interval_s: float = GROUP_UPDATE_INTERVAL_DEFAULT_S  # meshd/e2e/groups.py
    session_update_interval_s: float = 86400.0  # meshd/e2e/session_updates.py
    ble: bool | None = None  # None: on if an adapter exists (the transport says so once)
    ble_adapter: str = "hci0"
    ble_max_links: int = 4
    config_file: Path | None = field(default=None, compare=False)


def parse_host_port(text: str, *, key: str, allow_zero_port: bool = False) -> HostPort:
    """Parse ``HOST:PORT`` / ``[V6]:PORT``; a bare host gets ``DEFAULT_PORT``."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("expected HOST:PORT, got an empty value", field=key)
    s = text.strip()
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ConfigError(f"unclosed '[' in {s!r}", field=key)
        host, rest = s[1:end], s[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ConfigError(f"expected ':PORT' after ']' in {s!r}", field=key)
        port_text = rest[1:] if rest else ""
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError as exc:
            raise ConfigError(f"{host!r} is not an IPv6 address", field=key) from exc
    elif s.count(":") == 1:
        host, port_text = s.split(":")
    elif s.count(":") == 0:
        host, port_text = s, ""
    else:
        raise ConfigError(f"write IPv6 addresses as [ADDR]:PORT, got {s!r}", field=key)
    if not host:
        raise ConfigError(f"missing host in {s!r}", field=key)
    if not s.startswith("[") and not _HOST_RE.fullmatch(host):
        raise ConfigError(f"{host!r} is not a host name or IPv4 address", field=key)
    if not port_text:
        return HostPort(host, DEFAULT_PORT)
    if not port_text.isdigit():
        raise ConfigError(f"port {port_text!r} is not a number", field=key)
    port = int(port_text)
    if not (0 if allow_zero_port else 1) <= port <= 65535:
        raise ConfigError(f"port {port} out of range", field=key)
    return HostPort(host, port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshd", description="Offline-first mesh networking daemon (runs in the foreground)."
    )
    p.add_argument("--state-dir", metavar="DIR", help="identity and database directory")
    p.add_argument("--socket", metavar="PATH", help="API Unix socket (env MESHD_SOCKET)")
    p.add_argument("--config", metavar="FILE", help="TOML config file")
    p.add_argument("--listen", metavar="HOST:PORT", action="append", help="TCP listen (repeat)")
    p.add_argument("--peer", metavar="HOST:PORT", action="append", help="TCP peer (repeat)")
    p.add_argument(
        "--no-discovery", action="store_true", default=None, help="no LAN neighbour discovery"
    )
    p.add_argument("--log-level", metavar="LEVEL", help="debug, info, warning or error")
    p.add_argument("--log-format", metavar="FORMAT", help="auto, console or json")
    p.add_argument("--battery", metavar="N", help="fixed battery level 0..100")
    p.add_argument("--accept-from", metavar="WHO",
                   help="who may open a 1:1 session: anyone (default) or contacts")
    p.add_argument("--group-update-interval", metavar="SECONDS",
                   help="own MLS group self-update at least this often (default 86400)")
    ble = p.add_mutually_exclusive_group()
    ble.add_argument("--ble", dest="ble", action="store_true", default=None,
                     help="Bluetooth LE transport on (default: on if an adapter exists)")
    ble.add_argument("--no-ble", dest="ble", action="store_false", help="no Bluetooth LE")
    p.add_argument("--session-update-interval", metavar="SECONDS",
                   help="self-update of each 1:1 session at least this often (default 86400)")
    p.add_argument("--version", action="version", version=f"meshd {__version__}")
    return p


_KEYS = (
    "accept_from",
    "group_update_interval",
    "session_update_interval",
    "state_dir",
    "socket",
    "listen",
    "peers",
    "discovery",
    "log_level",
    "log_format",
    "battery",
    "ble",
)
_BLE_KEYS = ("enabled", "adapter", "max_links")
_ADAPTER_RE = re.compile(r"hci[0-9]{1,3}")


def load_config_file(path: Path) -> dict[str, Any]:
    """Read and parse a TOML file; reject unknown keys."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", field="config") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}", field="config") from exc
    for key in data:
        if key not in _KEYS:
            raise ConfigError(
                f"unknown key in {path} (known: {', '.join(_KEYS)})", field=key
            )
    return data


def _as_str(value: object, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"expected a non-empty string, got {value!r}", field=key)
    return value


def _as_list(value: object, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"expected a list of \"HOST:PORT\" strings, got {value!r}", field=key)
    return list(value)


def _as_level(value: object, key: str) -> str:
    text = _as_str(value, key).lower()
    if text not in LOG_LEVELS:
        raise ConfigError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}", field=key)
    return text


def _as_format(value: object, key: str) -> str:
    text = _as_str(value, key).lower()
    if text not in LOG_FORMATS:
        raise ConfigError(f"{value!r} is not one of {', '.join(LOG_FORMATS)}", field=key)
    return text


def _as_battery(value: object, key: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"expected an integer 0..100, got {value!r}", field=key)
    if isinstance(value, str):
        if not value.strip().isdigit():
            raise ConfigError(f"expected an integer 0..100, got {value!r}", field=key)
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= 100:
        raise ConfigError(f"expected an integer 0..100, got {value!r}", field=key)
    return value


def _as_interval(value: object, key: str) -> float:
    """Seconds, 1..GROUP_UPDATE_INTERVAL_MAX_S (a number, or its text from the CLI)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"expected a number of seconds, got {value!r}", field=key) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"expected a number of seconds, got {value!r}", field=key)
    if not 1 <= value <= GROUP_UPDATE_INTERVAL_MAX_S:
        raise ConfigError(
            f"expected 1..{GROUP_UPDATE_INTERVAL_MAX_S:.0f} seconds, got {value!r}", field=key
        )
    return float(value)


def _ble_table(value: object) -> dict[str, Any]:
    """The ``[ble]`` table (or a bare ``true``/``false`` from the command line)."""
    if isinstance(value, bool):
        return {"ble": value}
    if not isinstance(value, dict):
        raise ConfigError(f"expected a table, got {value!r}", field="ble")
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = f"ble.{key}"
        if key == "enabled":
            if not isinstance(item, bool):
                raise ConfigError(f"expected true or false, got {item!r}", field=name)
            out["ble"] = item
        elif key == "adapter":
            if not isinstance(item, str) or not _ADAPTER_RE.fullmatch(item):
                raise ConfigError(f"expected an adapter name like hci0, got {item!r}", field=name)
            out["ble_adapter"] = item
        elif key == "max_links":
            if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= 15:
                raise ConfigError(f"expected an integer 1..15, got {item!r}", field=name)
            out["ble_max_links"] = item
        else:
            raise ConfigError(f"unknown key (known: {', '.join(_BLE_KEYS)})", field=name)
    return out


def _apply(cfg: Config, values: Mapping[str, object]) -> Config:
    """Return ``cfg`` with validated ``values`` (config-file or CLI spelling) applied."""
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("state_dir", "socket"):
            changes[key] = Path(_as_str(value, key)).expanduser()
        elif key == "listen":
            changes[key] = tuple(
                parse_host_port(v, key=key, allow_zero_port=True) for v in _as_list(value, key)
            )
        elif key == "peers":
            changes[key] = tuple(parse_host_port(v, key=key) for v in _as_list(value, key))
        elif key == "discovery":
            if not isinstance(value, bool):
                raise ConfigError(f"expected true or false, got {value!r}", field=key)
            changes[key] = value
        elif key == "log_level":
            changes[key] = _as_level(value, key)
        elif key == "log_format":
            changes[key] = _as_format(value, key)
        elif key == "battery":
            changes[key] = _as_battery(value, key)
        elif key == "accept_from":
            if value not in ("anyone", "contacts"):
                raise ConfigError(f"expected anyone or contacts, got {value!r}", field=key)
            changes[key] = value
        elif key == "group_update_interval":
            changes["group_update_interval_s"] = _as_interval(value, key)
        elif key == "session_update_interval":
            changes["session_update_interval_s"] = _as_interval(value, key)
        elif key == "ble":
            changes.update(_ble_table(value))
        else:  # pragma: no cover - _KEYS and this chain are kept in step
            raise ConfigError("unknown setting", field=key)
    return replace(cfg, **changes)


def load_config(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    uid: int | None = None,
) -> Config:
    """Build the effective config from ``argv`` (without the program name) and ``env``."""
    e = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    cfg = Config(state_dir=default_state_dir(e, uid), socket=default_socket_path(e, uid))
    if args.config is not None:
        path = Path(args.config).expanduser()
        cfg = replace(_apply(cfg, load_config_file(path)), config_file=path)
    env_values: dict[str, object] = {}
    if e.get(SOCKET_ENV):
        env_values["socket"] = e[SOCKET_ENV]
    if e.get("STATE_DIRECTORY"):
        env_values["state_dir"] = default_state_dir(e, uid).as_posix()
    cfg = _apply(cfg, env_values)
    cli: dict[str, object] = {
        "state_dir": args.state_dir,
        "socket": args.socket,
        "listen": args.listen,
        "peers": args.peer,
        "discovery": False if args.no_discovery else None,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "battery": args.battery,
        "accept_from": args.accept_from,
        "group_update_interval": args.group_update_interval,
        "session_update_interval": args.session_update_interval,
        "ble": args.ble,
    }
    return _apply(cfg, {k: v for k, v in cli.items() if v is not None})
