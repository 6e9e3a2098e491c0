"""Default locations of the state directory and the API socket (DESIGN.md "API").

Every function takes the environment and uid as arguments (defaulting to the process's)
so that tests and several nodes in one process never depend on process-wide state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

SYSTEM_STATE_DIR = Path("/var/lib/meshd")
SYSTEM_SOCKET = Path("/run/meshd/meshd.sock")
SOCKET_ENV = "MESHD_SOCKET"


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _uid(uid: int | None) -> int:
    return os.geteuid() if uid is None else uid


def default_state_dir(env: Mapping[str, str] | None = None, uid: int | None = None) -> Path:
    """``$STATE_DIRECTORY`` under systemd, ``/var/lib/meshd`` as root, else the XDG data dir."""
    e = _env(env)
    systemd_dir = e.get("STATE_DIRECTORY", "")
    if systemd_dir:
        # systemd may pass several colon-separated dirs; StateDirectory=meshd gives one.
        return Path(systemd_dir.split(":")[0])
    if _uid(uid) == 0:
        return SYSTEM_STATE_DIR
    xdg = e.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path(e.get("HOME", "~")) / ".local/share"
    return base.expanduser() / "meshd"


def default_socket_path(env: Mapping[str, str] | None = None, uid: int | None = None) -> Path:
    """``$MESHD_SOCKET``, else ``/run/meshd/meshd.sock`` as root or a system service,
    else ``$XDG_RUNTIME_DIR/meshd/meshd.sock`` (``/run/user/UID`` when unset)."""
    e = _env(env)
    override = e.get(SOCKET_ENV, "")
    if override:
        return Path(override)
    u = _uid(uid)
    if u == 0 or e.get("RUNTIME_DIRECTORY", ""):
        runtime = e.get("RUNTIME_DIRECTORY", "")
        return Path(runtime.split(":")[0]) / "meshd.sock" if runtime else SYSTEM_SOCKET
    xdg_runtime = e.get("XDG_RUNTIME_DIR", "")
    base = Path(xdg_runtime) if xdg_runtime else Path(f"/run/user/{u}")
    return base / "meshd" / "meshd.sock"
