"""SO_PEERCRED extraction on real sockets, and the admin rule."""

from __future__ import annotations

import grp
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.api.peercred import PeerCred, is_admin, peer_credentials, supplementary_groups
from meshd.errors import PermissionDenied


def test_socketpair_reports_this_process() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        cred = peer_credentials(a)
    assert cred == PeerCred(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())


def test_listening_socket_reports_the_connecting_process(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    code = (
        "import socket,sys,os;s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1]);"
        "print(os.getpid(),flush=True);s.recv(1)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, path], stdout=subprocess.PIPE, text=True
    )
    try:
        server.settimeout(10)
        conn, _ = server.accept()
        with conn:
            cred = peer_credentials(conn)
            assert child.stdout is not None
            child_pid = int(child.stdout.readline())
            conn.sendall(b"x")
    finally:
        child.wait(10)
        server.close()
    assert cred.pid == child_pid != os.getpid()
    assert (cred.uid, cred.gid) == (os.getuid(), os.getgid())


def test_tcp_socket_is_refused() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    with server, client, conn, pytest.raises(PermissionDenied) as info:
        peer_credentials(conn)
    assert info.value.field == "socket"


def test_root_is_admin() -> None:
    assert is_admin(PeerCred(pid=1, uid=0, gid=0), admin_group="no-such-group-meshd")


def test_primary_group_makes_admin() -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    cred = PeerCred(pid=os.getpid(), uid=4242, gid=os.getgid())
    assert is_admin(cred, admin_group=group)


def test_unknown_admin_group_means_not_admin() -> None:
    cred = PeerCred(pid=os.getpid(), uid=4242, gid=4242)
    assert not is_admin(cred, admin_group="no-such-group-meshd")


def test_supplementary_groups_of_this_process() -> None:
    assert supplementary_groups(os.getpid()) == frozenset(os.getgroups())
    assert supplementary_groups(2**22 + 12345) == frozenset()  # no such pid
