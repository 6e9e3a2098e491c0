"""meshctl's command line: parsing, socket default, and failing cleanly with no daemon."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from meshctl.__main__ import amain, build_parser, socket_path


def test_global_options_before_or_after_the_command() -> None:
    p = build_parser()
    a = p.parse_args(["--json", "--app", "chat", "--socket", "/s", "status"])
    b = p.parse_args(["status", "--json", "--app", "chat", "--socket", "/s"])
    for args in (a, b):
        assert (args.json, args.app, args.socket, args.command) == (True, "chat", "/s", "status")
    c = p.parse_args(["peers"])
    assert (c.json, c.app, c.socket) == (False, "default", None)


def test_send_options() -> None:
    args = build_parser().parse_args(["send", "ADDR", "hello there", "--wait", "--timeout", "2.5"])
    assert (args.address, args.text, args.wait, args.timeout) == ("ADDR", "hello there", True, 2.5)
    assert build_parser().parse_args(["send", "A", "t"]).timeout == 30.0


def test_watch_and_history_options() -> None:
    assert build_parser().parse_args(["watch", "--from", "17"]).from_cursor == 17
    assert build_parser().parse_args(["watch"]).from_cursor is None
    h = build_parser().parse_args(["history", "--peer", "X", "--limit", "5"])
    assert (h.peer, h.limit) == ("X", 5)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["send", "only-address"],
        ["send", "A", "t", "--timeout", "0"],
        ["send", "A", "t", "--timeout", "soon"],
        ["history", "--limit", "0"],
        ["history", "--limit", "1001"],
        ["watch", "--from", "-1"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    assert "meshctl" in capsys.readouterr().err


def test_socket_default_follows_meshd_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHD_SOCKET", "/tmp/elsewhere.sock")
    assert socket_path(build_parser().parse_args(["status"])) == "/tmp/elsewhere.sock"
    assert socket_path(build_parser().parse_args(["--socket", "/x.sock", "status"])) == "/x.sock"


async def test_no_daemon_is_one_clear_line(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    path = tmp_path / "meshd.sock"
    code = await amain(["--socket", str(path), "status"], out=out, err=err)
    assert code == 1
    assert err.getvalue() == f"meshctl: cannot connect to meshd at {path}: is meshd running?\n"
    assert out.getvalue() == ""


async def test_dead_socket_file_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "meshd.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the file stays, nobody listens
    err = io.StringIO()
    code = await amain(["--socket", str(path), "peers"], out=io.StringIO(), err=err)
    assert code == 1
    expected = f"meshctl: cannot connect to meshd at {path}: is meshd running?"
    assert err.getvalue().strip() == expected
