"""The ``meshd`` process: first start, sd_notify READY/STATUS/WATCHDOG, SIGTERM, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshd.sdnotify import SdNotifier

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield sock, path
    sock.close()


def _recv_until(sock: socket.socket, key: str, deadline: float) -> list[str]:
    got: list[str] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        lines = sock.recv(4096).decode().splitlines()
        got.extend(lines)
        if any(line.startswith(key) for line in lines):
            return got
    raise AssertionError(f"no {key} within the deadline; got {got}")


def _start(tmp_path: Path, env_extra: dict[str, str], *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "MESHD_SOCKET")}
    env.update(env_extra)
    return subprocess.Popen(
        [
            sys.executable, "-m", "meshd",
            "--state-dir", str(tmp_path / "state"),
            "--socket", str(tmp_path / "api.sock"),
            "--listen", "127.0.0.1:0",
            "--no-discovery",
            "--log-format", "json",
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _start_ready(tmp_path: Path, name: str) -> subprocess.Popen[str]:
    """Start meshd and return once it has sent READY=1."""
    path = str(tmp_path / f"{name}.notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        proc = _start(tmp_path, {"NOTIFY_SOCKET": path})
        try:
            _recv_until(sock, "READY=1", time.monotonic() + 15)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    return proc


def test_first_start_ready_watchdog_and_sigterm(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    t0 = time.monotonic()
    proc = _start(tmp_path, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    try:
        lines = _recv_until(sock, "READY=1", t0 + 15)
        ready_s = time.monotonic() - t0
        status = [line for line in lines if line.startswith("STATUS=")]
        assert status and "neighbours" in status[0]
        # The API socket is listening by READY (it is what READY promises).
        assert stat.S_ISSOCK(os.stat(tmp_path / "api.sock").st_mode)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(tmp_path / "api.sock"))
        probe.close()
        # WATCHDOG=1 every 0.2 s (half of WATCHDOG_USEC).
        _recv_until(sock, "WATCHDOG=1", time.monotonic() + 2)
        state = tmp_path / "state"
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(state / "identity.key").st_mode) == 0o600
        assert stat.S_IMODE(os.stat(state / "meshd.db").st_mode) == 0o600
        proc.send_signal(signal.SIGTERM)
        _recv_until(sock, "STOPPING=1", time.monotonic() + 5)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert '"msg": "node_stopped"' in err
        assert not (tmp_path / "api.sock").exists()
        print(f"start to READY: {ready_s:.2f} s")
        # Generous bound for a loaded 2-core CI box; the target (<= 1.5 s) is printed.
        assert ready_s < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_second_start_keeps_identity(tmp_path: Path) -> None:
    addresses = []
    for _ in range(2):
        proc = _start(tmp_path, {})
        try:
            deadline = time.monotonic() + 15
            while not (tmp_path / "api.sock").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        line = next(ln for ln in err.splitlines() if '"node_started"' in ln)
        addresses.append(line.split('"address": "')[1].split('"')[0])
    assert addresses[0] == addresses[1]


def test_unreadable_database_is_one_clear_line_and_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "meshd.db").write_bytes(b"garbage" * 1000)
    proc = _start(tmp_path, {})
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1].startswith("meshd: state database ")
    assert "unreadable" in err
    assert (state / "meshd.db").read_bytes() == b"garbage" * 1000


def test_sdnotify_without_socket_is_a_noop() -> None:
    n = SdNotifier(env={})
    assert not n.enabled and n.watchdog_interval is None
    assert n.notify(READY=1) is False
    other_pid = SdNotifier(env={"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, pid=2)
    assert other_pid.watchdog_interval is None
    assert SdNotifier(env={"WATCHDOG_USEC": "1000000"}).watchdog_interval == 0.5


def test_sdnotify_abstract_socket() -> None:
    name = f"meshd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert SdNotifier(env={"NOTIFY_SOCKET": "@" + name}).notify(READY=1, STATUS="ok")
        assert sock.recv(100) == b"READY=1\nSTATUS=ok"
    finally:
        sock.close()


def test_kill_9_loses_no_accepted_message(tmp_path: Path) -> None:
    """Every message meshctl saw accepted is in the outbox after a kill -9 and a restart."""
    from meshd.crypto.identity import Identity

    dst = Identity.generate().address.text  # nobody we can reach: stays queued
    proc = _start_ready(tmp_path, "first")
    accepted: list[str] = []
    try:
        for i in range(5):
            out = subprocess.run(
                [sys.executable, "-m", "meshctl", "--socket", str(tmp_path / "api.sock"),
                 "--json", "send", dst, f"burst {i}"],
                capture_output=True, text=True, timeout=30, check=True,
            ).stdout  # fmt: skip
            accepted.append(json.loads(out)["message_id"])
        proc.kill()  # SIGKILL: no shutdown code runs
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    conn = sqlite3.connect(tmp_path / "state" / "meshd.db")
    rows = {r[0].hex() for r in conn.execute("SELECT message_id FROM outbox")}
    conn.close()
    assert set(accepted) <= rows and len(accepted) == 5
    # And a restarted daemon picks them up again (restored into the core).
    proc = _start_ready(tmp_path, "second")
    try:
        status = subprocess.run(
            [sys.executable, "-m", "meshctl", "--socket", str(tmp_path / "api.sock"),
             "--json", "status"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        assert json.loads(status)["status"]["outbox"] == 5
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        assert '"msg": "outbox_restored"' in err and '"messages": 5' in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_read_battery_from_sysfs(tmp_path: Path) -> None:
    from meshd.__main__ import read_battery

    assert read_battery(tmp_path / "missing") is None
    mains = tmp_path / "AC"
    mains.mkdir()
    (mains / "type").write_text("Mains\n")
    assert read_battery(tmp_path) is None
    mouse = tmp_path / "hidpp_battery_0"
    mouse.mkdir()
    for name, value in (("type", "Battery"), ("scope", "Device"), ("capacity", "5"),
                        ("status", "Discharging")):
        (mouse / name).write_text(value + "\n")
    assert read_battery(tmp_path) is None  # a peripheral's battery is not ours
    bat = tmp_path / "BAT0"
    bat.mkdir()
    for name, value in (("type", "Battery"), ("capacity", "42"), ("status", "Charging")):
        (bat / name).write_text(value + "\n")
    assert read_battery(tmp_path) == (42, True)
    (bat / "status").write_text("Discharging\n")
    assert read_battery(tmp_path) == (42, False)


def test_unusable_socket_path_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = subprocess.run(
        [sys.executable, "-m", "meshd", "--state-dir", str(tmp_path / "state"),
         "--socket", str(blocker / "api.sock"), "--listen", "127.0.0.1:0", "--no-discovery",
         "--log-format", "json"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("meshd: ") and str(blocker) in last
    assert "Traceback" not in proc.stderr
