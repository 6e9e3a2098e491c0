"""sd_notify(3) over ``$NOTIFY_SOCKET`` (no systemd-python): READY, STATUS, WATCHDOG."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class SdNotifier:
    """Sends notifications when run under systemd; every call is a no-op otherwise."""

    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        e = os.environ if env is None else env
        addr = e.get("NOTIFY_SOCKET", "")
        # "@name" is the abstract namespace (leading NUL byte on the wire).
        self._address = "\0" + addr[1:] if addr.startswith("@") else addr
        self._watchdog_s: float | None = None
        usec = e.get("WATCHDOG_USEC", "")
        watchdog_pid = e.get("WATCHDOG_PID", "")
        mine = not watchdog_pid or watchdog_pid == str(os.getpid() if pid is None else pid)
        if usec.isdigit() and int(usec) > 0 and mine:
            self._watchdog_s = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of ``$WATCHDOG_USEC`` (sd_watchdog_enabled)."""
        return None if self._watchdog_s is None else self._watchdog_s / 2

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (``notify(READY=1, STATUS="...")``); False if not sent."""
        if not self._address:
            return False
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            try:
                sock.sendto(message, self._address)
            except OSError:
                return False
        return True
