"""The group self-update interval in the TOML config and on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshd.config import GROUP_UPDATE_INTERVAL_DEFAULT_S, load_config
from meshd.e2e.groups_events import GroupConfig
from meshd.errors import ConfigError

ENV = {"HOME": "/home/ann", "XDG_RUNTIME_DIR": "/run/user/1000"}


def test_default_is_the_group_layers_default() -> None:
    cfg = load_config([], env=ENV, uid=1000)
    assert cfg.group_update_interval_s == GROUP_UPDATE_INTERVAL_DEFAULT_S
    assert GroupConfig().update_interval_s == GROUP_UPDATE_INTERVAL_DEFAULT_S


def test_toml_then_cli_override(tmp_path: Path) -> None:
    conf = tmp_path / "meshd.toml"
    conf.write_text("group_update_interval = 3600\n")
    cfg = load_config(["--config", str(conf)], env=ENV, uid=1000)
    assert cfg.group_update_interval_s == 3600.0
    cfg = load_config(["--config", str(conf), "--group-update-interval", "90.5"], env=ENV, uid=1000)
    assert cfg.group_update_interval_s == 90.5


@pytest.mark.parametrize("bad", ["0", "-5", "soon", "1e12", "nan"])
def test_bad_cli_values_name_the_key(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(["--group-update-interval", bad], env=ENV, uid=1000)
    assert err.value.field == "group_update_interval"


@pytest.mark.parametrize("bad", ["true", '"1h"', "0", "[60]"])
def test_bad_toml_values_name_the_key(tmp_path: Path, bad: str) -> None:
    conf = tmp_path / "meshd.toml"
    conf.write_text(f"group_update_interval = {bad}\n")
    with pytest.raises(ConfigError) as err:
        load_config(["--config", str(conf)], env=ENV, uid=1000)
    assert err.value.field == "group_update_interval"
