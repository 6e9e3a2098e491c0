"""Config: defaults by environment, TOML file, CLI precedence, errors naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.config import DEFAULT_PORT, HostPort, load_config, parse_host_port
from meshd.errors import ConfigError
from meshd.paths import default_socket_path, default_state_dir

USER_ENV = {"HOME": "/home/ann", "XDG_RUNTIME_DIR": "/run/user/1000"}


def test_defaults_as_user() -> None:
    cfg = load_config([], env=USER_ENV, uid=1000)
    assert cfg.state_dir == Path("/home/ann/.local/share/meshd")
    assert cfg.socket == Path("/run/user/1000/meshd/meshd.sock")
    assert cfg.listen == (HostPort("::", 4717),)
    assert DEFAULT_PORT == 4717
    assert cfg.peers == ()
    assert cfg.discovery is True
    assert cfg.battery is None


def test_defaults_as_root_and_under_systemd() -> None:
    assert default_state_dir({}, 0) == Path("/var/lib/meshd")
    assert default_socket_path({}, 0) == Path("/run/meshd/meshd.sock")
    env = {"STATE_DIRECTORY": "/var/lib/meshd", "RUNTIME_DIRECTORY": "/run/meshd"}
    assert default_state_dir(env, 998) == Path("/var/lib/meshd")
    assert default_socket_path(env, 998) == Path("/run/meshd/meshd.sock")


def test_xdg_data_home_and_socket_env() -> None:
    env = {**USER_ENV, "XDG_DATA_HOME": "/data", "MESHD_SOCKET": "/tmp/x.sock"}
    cfg = load_config([], env=env, uid=1000)
    assert cfg.state_dir == Path("/data/meshd")
    assert cfg.socket == Path("/tmp/x.sock")
    # --socket beats MESHD_SOCKET
    assert load_config(["--socket", "/tmp/y.sock"], env=env, uid=1000).socket == Path(
        "/tmp/y.sock"
    )


def test_every_flag(tmp_path: Path) -> None:
    cfg = load_config(
        [
            "--state-dir", str(tmp_path),
            "--socket", str(tmp_path / "s.sock"),
            "--listen", "127.0.0.1:0",
            "--listen", "[::1]:5000",
            "--peer", "10.0.0.2:4718",
            "--peer", "[fe80::1%veth0]:4717",
            "--no-discovery",
            "--log-level", "DEBUG",
            "--log-format", "json",
            "--battery", "42",
        ],
        env=USER_ENV,
        uid=1000,
    )  # fmt: skip
    assert cfg.state_dir == tmp_path
    assert cfg.listen == (HostPort("127.0.0.1", 0), HostPort("::1", 5000))
    assert cfg.peers == (HostPort("10.0.0.2", 4718), HostPort("fe80::1%veth0", 4717))
    assert cfg.discovery is False
    assert (cfg.log_level, cfg.log_format, cfg.battery) == ("debug", "json", 42)


def test_toml_file_and_cli_override(tmp_path: Path) -> None:
    conf = tmp_path / "meshd.toml"
    conf.write_text(
        'state_dir = "/srv/mesh"\nlisten = ["0.0.0.0:4800"]\npeers = ["host.lan"]\n'
        'discovery = false\nlog_level = "warning"\nlog_format = "console"\nbattery = 10\n'
        'socket = "/tmp/m.sock"\n'
    )
    cfg = load_config(["--config", str(conf)], env=USER_ENV, uid=1000)
    assert cfg.state_dir == Path("/srv/mesh")
    assert cfg.listen == (HostPort("0.0.0.0", 4800),)
    assert cfg.peers == (HostPort("host.lan", DEFAULT_PORT),)
    assert (cfg.discovery, cfg.log_level, cfg.log_format, cfg.battery) == (
        False, "warning", "console", 10,
    )  # fmt: skip
    cfg2 = load_config(
        ["--config", str(conf), "--listen", "[::]:1", "--battery", "99"], env=USER_ENV, uid=1000
    )
    assert cfg2.listen == (HostPort("::", 1),)
    assert cfg2.battery == 99
    assert cfg2.peers == (HostPort("host.lan", DEFAULT_PORT),)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("bogus = 1", "bogus"),
        ('listen = ["1.2.3.4:99999"]', "listen"),
        ("listen = 5", "listen"),
        ('peers = ["[::1:4717"]', "peers"),
        ('peers = ["::1:4717"]', "peers"),
        ("discovery = 1", "discovery"),
        ('log_level = "loud"', "log_level"),
        ('log_format = "xml"', "log_format"),
        ("battery = 101", "battery"),
        ("battery = true", "battery"),
        ('state_dir = ""', "state_dir"),
        ("this is not toml", "config"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(toml + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(["--config", str(conf)], env=USER_ENV, uid=1000)
    assert info.value.field == key
    assert key in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(["--config", str(tmp_path / "nope.toml")], env=USER_ENV, uid=1000)
    assert info.value.field == "config"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.org:80", HostPort("example.org", 80)),
        ("10.1.2.3", HostPort("10.1.2.3", DEFAULT_PORT)),
        ("[::]", HostPort("::", DEFAULT_PORT)),
        ("[fe80::2%eth0]:9", HostPort("fe80::2%eth0", 9)),
    ],
)
def test_parse_host_port(text: str, expected: HostPort) -> None:
    assert parse_host_port(text, key="peers") == expected


@pytest.mark.parametrize(
    "text", ["", ":80", "h:0", "h:x", "[nothex]:1", "[::1]x", "h:-1", "a b:80", "-h:1", "h/x:1"]
)
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_host_port(text, key="peers")
    assert info.value.field == "peers"


def test_cli_bad_value_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "meshd", "--state-dir", str(tmp_path), "--battery", "200"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["meshd: config error: battery: expected an integer 0..100, got 200"]


def test_version_flag() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "meshd", "--version"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0
    assert proc.stdout.startswith("meshd ")


@given(
    st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(str),
        st.from_regex(
            r"[a-z]([a-z0-9-]{0,19}[a-z0-9])?(\.[a-z]([a-z0-9-]{0,19}[a-z0-9])?){0,3}",
            fullmatch=True,
        ),
    ),
    st.integers(min_value=1, max_value=65535),
)
def test_host_port_text_round_trip(host: str, port: int) -> None:
    hp = HostPort(host, port)
    assert parse_host_port(str(hp), key="peers") == hp


@given(st.text(max_size=40))
def test_parse_host_port_only_raises_config_error(text: str) -> None:
    try:
        parse_host_port(text, key="listen", allow_zero_port=True)
    except ConfigError as exc:
        assert exc.field == "listen"
