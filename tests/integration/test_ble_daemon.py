"""A meshd daemon and BLE without a usable adapter: it starts, says so once, and reports
the BLE transport UNAVAILABLE (issue 5: "the daemon starts without BLE")."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshd.testing.daemon_proc import MeshdProcess, child_env
from meshd.testing.virtual_bluez import dbus_daemon_path

pytestmark = [
    pytest.mark.skipif(dbus_daemon_path() is None, reason="dbus-daemon not installed"),
    pytest.mark.timeout(60),
]
pytest.importorskip("bleak")


def _ble(daemon: MeshdProcess) -> dict[str, str]:
    doc = daemon.meshctl_json("status")
    (ble,) = [t for t in doc["transports"] if t["name"] == "ble"]
    return {k: str(v) for k, v in ble.items()}


def _unavailable_lines(daemon: MeshdProcess) -> list[str]:
    return [ln for ln in daemon.log_path.read_text().splitlines() if "ble.unavailable" in ln]


def test_no_such_adapter_and_no_bus_start_without_ble(tmp_path: Path) -> None:
    world = subprocess.Popen(
        [sys.executable, "-m", "meshd.testing.virtual_bluez", "--node", "a"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(tmp_path),
    )
    daemons: list[MeshdProcess] = []
    try:
        assert world.stdout is not None
        bus = json.loads(world.stdout.readline())["nodes"]["a"]["bus"]
        conf = tmp_path / "meshd.toml"
        conf.write_text('[ble]\nadapter = "hci1"\n')
        wrong = MeshdProcess("wrong", tmp_path / "wrong", tmp_path)
        wrong.env = {"DBUS_SYSTEM_BUS_ADDRESS": bus}
        nobus = MeshdProcess("nobus", tmp_path / "nobus", tmp_path)
        nobus.env = {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path / 'no-such-bus'}"}
        daemons += [wrong, nobus]
        wrong.start("--config", str(conf), "--listen", "127.0.0.1:0", "--no-discovery")
        nobus.start("--listen", "127.0.0.1:0", "--no-discovery")
        time.sleep(0.5)
        status = _ble(wrong)
        assert status["state"].lower().endswith("unavailable")
        assert "no Bluetooth adapter hci1" in status["detail"]
        status = _ble(nobus)
        assert status["state"].lower().endswith("unavailable")
        assert "system bus" in status["detail"]
        for daemon in daemons:
            assert len(_unavailable_lines(daemon)) == 1
            assert daemon.meshctl("status").returncode == 0  # the rest of meshd works
    finally:
        for daemon in daemons:
            daemon.close()
        if world.stdin is not None:
            world.stdin.write("quit\n")
            world.stdin.flush()
        world.wait(10)
