"""A private dbus-daemon per simulated node: its own socket in a temporary directory."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path

from meshd.errors import FailedPrecondition, Unavailable

# Everyone on this private bus may own any name and talk to anyone: it stands for the
# system bus of one simulated machine, where BlueZ and the apps run as the same user.
_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


def dbus_daemon_path() -> str | None:
    """Path of the dbus-daemon binary, or None when it is not installed."""
    return shutil.which("dbus-daemon")


class PrivateBus:
    """Start/stop one dbus-daemon; ``address`` is what DBUS_SYSTEM_BUS_ADDRESS takes."""

    def __init__(self, name: str = "bus") -> None:
        self.name = name
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._address: str | None = None

    @property
    def address(self) -> str:
        if self._address is None:
            raise FailedPrecondition(f"bus {self.name!r} is not running", field="bus")
        return self._address

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self, *, start_timeout: float = 10.0) -> str:
        """Start the daemon and return its address once it accepts connections."""
        binary = dbus_daemon_path()
        if binary is None:
            raise Unavailable("dbus-daemon is not installed (apt-get install dbus)")
        if self._proc is not None:
            raise FailedPrecondition(f"bus {self.name!r} already started", field="bus")
        self._dir = tempfile.TemporaryDirectory(prefix=f"vbluez-{self.name}-")
        base = Path(self._dir.name)
        config = base / "bus.conf"
        config.write_text(_CONFIG.format(socket=base / "bus.sock"), encoding="utf-8")
        self._proc = await asyncio.create_subprocess_exec(
            binary,
            f"--config-file={config}",
            "--nofork",
            "--nopidfile",
            "--print-address",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), start_timeout)
        except TimeoutError:
            await self.stop()
            raise Unavailable(f"dbus-daemon for {self.name!r} did not start") from None
        if not line:
            err = b""
            if self._proc.stderr is not None:
                err = await self._proc.stderr.read()
            await self.stop()
            raise Unavailable(
                f"dbus-daemon for {self.name!r} exited: {err.decode(errors='replace')}"
            )
        self._address = line.decode().strip()
        return self._address

    async def stop(self) -> None:
        """Terminate the daemon (idempotent) and remove its directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._dir is not None:
            with contextlib.suppress(OSError):
                self._dir.cleanup()
            self._dir = None
        self._address = None
