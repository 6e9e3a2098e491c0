"""The namespace lab itself: only neighbours are linked, nothing is forwarded, loss is
what was asked, and nothing is left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meshd.errors import InvalidArgument
from meshd.testing.netns import NetnsLab, chain, reap_stale, unavailable_reason
from tests.system.conftest import LabFactory

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

_RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 9999))
print("ready", flush=True)
s.settimeout(float(sys.argv[1]))
n = 0
try:
    while True:
        s.recv(2048)
        n += 1
        s.settimeout(0.5)
except TimeoutError:
    pass
print(n, flush=True)
"""

_SENDER = """
import socket, sys, time
host, count = sys.argv[1], int(sys.argv[2])
info = socket.getaddrinfo(host, 9999, type=socket.SOCK_DGRAM)[0]
s = socket.socket(info[0], socket.SOCK_DGRAM)
for i in range(count):
    try:
        s.sendto(b"x" * 200, info[4])
    except OSError as exc:
        print("error", exc.errno, flush=True)
        sys.exit(3)
    if i % 20 == 19:
        time.sleep(0.002)
"""


def _udp(lab: NetnsLab, src: str, dst: str, host: str, count: int) -> int:
    """Datagrams that ``dst`` received out of ``count`` that ``src`` sent to ``host``."""
    receiver = lab.popen(
        dst, [sys.executable, "-c", _RECEIVER, "2.0"], stdout=subprocess.PIPE
    )
    assert receiver.stdout is not None
    assert receiver.stdout.readline().strip() == "ready"
    sent = lab.exec(src, [sys.executable, "-c", _SENDER, host, str(count)], check=False)
    out, _ = receiver.communicate(timeout=10)
    assert sent.returncode in (0, 3), sent.stderr
    return int(out.split()[-1])


def test_only_neighbours_are_linked_and_nothing_is_forwarded(make_lab: LabFactory) -> None:
    nodes, links = chain(3)
    lab = make_lab(nodes, links, ipv4=True)
    # One hop, IPv4 and link-local IPv6 (with the scope of the veth facing the peer).
    assert _udp(lab, "a", "b", lab.ipv4("b", "a"), 20) == 20
    b_ll = f"{lab.link_local('b', 'a')}%{lab.ifname('a', 'b')}"
    assert _udp(lab, "a", "b", b_ll, 20) == 20
    # Two hops: give a and c routes through b; b does not forward, so nothing arrives.
    lab.exec("a", ["ip", "route", "add", lab.ipv4("c", "b"), "via", lab.ipv4("b", "a")])
    lab.exec("c", ["ip", "route", "add", lab.ipv4("a", "b"), "via", lab.ipv4("b", "c")])
    assert _udp(lab, "a", "c", lab.ipv4("c", "b"), 20) == 0
    # Without that route, a has no way at all to c's address.
    lab.exec("a", ["ip", "route", "del", lab.ipv4("c", "b")])
    assert _udp(lab, "a", "c", lab.ipv4("c", "b"), 5) == 0
    ll_a = lab.exec("a", ["ip", "-6", "-o", "addr", "show", "scope", "link"]).stdout
    assert "ve-b" in ll_a and "ve-c" not in ll_a
    for node in nodes:
        fwd = lab.exec(node, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip()
        assert fwd == "0"


def test_loss_drops_about_the_asked_share_each_way(make_lab: LabFactory) -> None:
    lab = make_lab(["a", "b"], [("a", "b")], ipv4=True)
    # Resolve ARP first: a lost ARP exchange would stall the whole burst behind a 1 s
    # retry and measure ARP, not the loss rule.
    assert _udp(lab, "a", "b", lab.ipv4("b", "a"), 5) == 5
    assert _udp(lab, "b", "a", lab.ipv4("a", "b"), 5) == 5
    lab.set_loss("a", "b", 30)
    count = 600
    forward = _udp(lab, "a", "b", lab.ipv4("b", "a"), count)
    backward = _udp(lab, "b", "a", lab.ipv4("a", "b"), count)
    # Binomial(600, 0.7): sd ≈ 11 datagrams; ±60 is more than 5 sd.
    assert 360 <= forward <= 480, forward
    assert 360 <= backward <= 480, backward
    rules = lab.exec("a", ["nft", "list", "ruleset"]).stdout
    assert "numgen random mod 100 < 30" in rules and 've-b' in rules
    lab.set_loss("a", "b", 100)  # a black hole (numgen cannot express "< 100")
    assert _udp(lab, "a", "b", lab.ipv4("b", "a"), 50) == 0
    lab.set_loss("a", "b", 0)
    assert _udp(lab, "a", "b", lab.ipv4("b", "a"), count) == count
    assert "numgen" not in lab.exec("b", ["nft", "list", "ruleset"]).stdout
    with pytest.raises(InvalidArgument, match="percent"):
        lab.set_loss("a", "b", 101)


def test_link_down_cuts_and_link_up_restores(make_lab: LabFactory) -> None:
    lab = make_lab(["a", "b"], [("a", "b")], ipv4=True)
    lab.link_down("a", "b")
    assert _udp(lab, "a", "b", lab.ipv4("b", "a"), 10) == 0
    lab.link_up("a", "b")
    assert _udp(lab, "a", "b", lab.ipv4("b", "a"), 10) == 10


def _our_namespaces(tag: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(tag)]


def test_close_removes_namespaces_and_processes(tmp_path: Path) -> None:
    lab = NetnsLab.create(["a", "b"], [("a", "b")], tmp_path / "l1")
    other = NetnsLab.create(["a", "b"], [("a", "b")], tmp_path / "l2")
    try:
        assert lab.tag != other.tag  # parallel labs never collide
        assert len(_our_namespaces(lab.tag)) == 2
        sleeper = lab.popen("a", ["sleep", "300"])
    finally:
        lab.close()
        other.close()
    assert sleeper.wait(5) == -9
    assert _our_namespaces(lab.tag) == [] and _our_namespaces(other.tag) == []
    lab.close()  # idempotent


def test_bad_topologies_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="links"):
        NetnsLab.create(["a", "b"], [("a", "c")], tmp_path)
    with pytest.raises(InvalidArgument, match="nodes"):
        NetnsLab.create(["A"], [], tmp_path)
    assert not [ns for ns in _our_namespaces(f"mlab-{os.getpid()}-")]


def test_stale_namespaces_of_dead_runs_are_reaped() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"mlab-{dead.pid}-abcdef-a"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in reap_stale()
        assert _our_namespaces(stale) == []
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def test_without_root_the_reason_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "root" in (unavailable_reason() or "")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "nft" else "/bin/x")
    assert "nft" in (unavailable_reason() or "")
