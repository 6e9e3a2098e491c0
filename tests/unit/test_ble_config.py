"""The BLE settings: --ble/--no-ble, the [ble] table, errors naming the key; the transport
without an adapter or bus starts UNAVAILABLE and says so once."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.config import load_config
from meshd.crypto.identity import Identity
from meshd.errors import ConfigError
from meshd.router.events import LinkId
from meshd.transports.base import Link, TransportState

ENV = {"XDG_RUNTIME_DIR": "/tmp/x", "XDG_DATA_HOME": "/tmp/x"}


def test_flags_and_default() -> None:
    assert load_config([], env=ENV).ble is None  # auto: on when an adapter exists
    assert load_config(["--ble"], env=ENV).ble is True
    assert load_config(["--no-ble"], env=ENV).ble is False
    with pytest.raises(SystemExit):
        load_config(["--ble", "--no-ble"], env=ENV)


def test_ble_table(tmp_path: Path) -> None:
    path = tmp_path / "meshd.toml"
    path.write_text('[ble]\nenabled = false\nadapter = "hci1"\nmax_links = 7\n')
    cfg = load_config(["--config", str(path)], env=ENV)
    assert (cfg.ble, cfg.ble_adapter, cfg.ble_max_links) == (False, "hci1", 7)
    assert load_config(["--config", str(path), "--ble"], env=ENV).ble is True  # CLI wins


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ('[ble]\nenabled = "yes"\n', "ble.enabled"),
        ('[ble]\nadapter = "eth0"\n', "ble.adapter"),
        ("[ble]\nmax_links = 0\n", "ble.max_links"),
        ("[ble]\nmax_links = true\n", "ble.max_links"),
        ("[ble]\nspeed = 1\n", "ble.speed"),
        ('ble = "on"\n', "ble"),
    ],
)
def test_bad_ble_settings_name_the_key(tmp_path: Path, table: str, field: str) -> None:
    path = tmp_path / "meshd.toml"
    path.write_text(table)
    with pytest.raises(ConfigError) as info:
        load_config(["--config", str(path)], env=ENV)
    assert info.value.field == field


class _Events:
    def link_up(self, link: Link) -> LinkId:
        raise AssertionError("no links without an adapter")

    def frame_received(self, link_id: LinkId, frame: bytes) -> None:
        raise AssertionError

    def link_down(self, link_id: LinkId) -> None:
        raise AssertionError


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def warning(self, event: str, **kw: object) -> None:
        self.lines.append((event, kw))

    def __getattr__(self, name: str) -> object:
        return lambda *a, **k: None


async def test_no_system_bus_means_unavailable_said_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("dbus_fast")
    from meshd.transports.ble import BleTransport

    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", f"unix:path={tmp_path / 'nobus'}")
    log = _Log()
    ble = BleTransport(Identity.generate(), logger=log)
    await ble.start(_Events())
    status = ble.status()
    assert status.state is TransportState.UNAVAILABLE
    assert "system bus" in status.detail and status.links == 0
    assert [e for e, _ in log.lines] == ["ble.unavailable"]
    await ble.stop()
    assert ble.status().state is TransportState.STOPPED
