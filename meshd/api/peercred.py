"""Kernel-verified credentials of a Unix-socket peer (SO_PEERCRED) and the admin rule."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass

from meshd.errors import PermissionDenied

ADMIN_GROUP = "meshd-admin"
_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;} (socket(7))


@dataclass(frozen=True, slots=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> PeerCred:
    """The pid/uid/gid the kernel recorded when ``sock``'s peer connected."""
    if sock.family != socket.AF_UNIX:
        # Linux answers SO_PEERCRED on other families with "nobody": never trust that.
        raise PermissionDenied("caller credentials need a Unix socket", field="socket")
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    if pid <= 0:
        raise PermissionDenied("the kernel reported no credentials for this peer", field="socket")
    return PeerCred(pid=pid, uid=uid, gid=gid)


def supplementary_groups(pid: int) -> frozenset[int]:
    """The peer process's groups from /proc (empty when it has gone or /proc is hidden)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except OSError:
        pass
    return frozenset()


def is_admin(cred: PeerCred, *, admin_group: str = ADMIN_GROUP) -> bool:
    """Root, or the caller's primary or supplementary groups include ``admin_group``."""
    if cred.uid == 0:
        return True
    try:
        admin_gid = grp.getgrnam(admin_group).gr_gid
    except KeyError:
        return False
    if cred.gid == admin_gid or admin_gid in supplementary_groups(cred.pid):
        return True
    # The process may have gone already: fall back to the group database.
    try:
        name = pwd.getpwuid(cred.uid).pw_name
    except KeyError:
        return False
    return name in grp.getgrgid(admin_gid).gr_mem


def current_process_cred() -> PeerCred:
    return PeerCred(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())
