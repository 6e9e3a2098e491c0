"""MLS groups between real meshd processes in network namespaces (issue 4, "What must hold"):
a 5-member group spread over a chain a-b-c-d-e where only neighbours share a link; a member
offline (daemon stopped) during two commits catches up after its restart and reads the
next message; two admins commit at once on both sides of a partition, and after the heal
every member agrees on one epoch and they can talk."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from meshd.testing.netns import NetnsLab, chain
from tests.system.conftest import LabFactory

pytestmark = [pytest.mark.slow, pytest.mark.netns]


def _until(pred: Callable[[], bool], *, within: float, what: str) -> None:
    end = time.monotonic() + within
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _groups(lab: NetnsLab, node: str) -> list[dict[str, Any]]:
    doc = lab.meshctl_json(node, "groups", "list")
    groups: list[dict[str, Any]] = doc.get("groups", [])
    return groups


def _epoch(lab: NetnsLab, node: str, gid: str) -> int | None:
    for g in _groups(lab, node):
        if g["group_id"] == gid:
            return int(g["epoch"])
    return None


def _texts(lab: NetnsLab, node: str, gid: str) -> list[bytes]:
    import base64

    doc = lab.meshctl_json(node, "groups", "history", gid)
    return [base64.b64decode(m["content"]) for m in doc.get("messages", [])]


def _five(make_lab: LabFactory) -> tuple[NetnsLab, dict[str, str], str]:
    nodes, links = chain(5)
    lab = make_lab(nodes, links)
    lab.start_all()
    addr = {n: lab.meshctl_json(n, "status")["status"]["address"] for n in nodes}
    gid = lab.meshctl_json("a", "groups", "create", "five")["group_id"]
    # Key packages come from announces (or a request through the mesh): retry while the
    # mesh is still converging after the cold start.
    pending = [addr[n] for n in "bcde"]

    def invited() -> bool:
        nonlocal pending
        for address in list(pending):
            done = lab.meshctl("a", "groups", "invite", gid, address, timeout=60, check=False)
            if done.returncode == 0:
                pending.remove(address)
        return not pending

    _until(invited, within=150, what="4 invitations")
    _until(lambda: all(_epoch(lab, n, gid) == 4 for n in "bcde"), within=90, what="all joined")
    return lab, addr, gid


@pytest.mark.timeout(420)
def test_member_offline_during_two_commits_catches_up(make_lab: LabFactory) -> None:
    lab, addr, gid = _five(make_lab)
    lab.meshctl("a", "groups", "send", gid, "hello five")
    _until(lambda: all(_texts(lab, n, gid) == [b"hello five"] for n in "bcde"), within=90,
           what="first message everywhere")  # fmt: skip
    assert lab.stop("e") == 0
    lab.meshctl("a", "groups", "role", gid, addr["b"], "admin")
    lab.meshctl("a", "groups", "role", gid, addr["c"], "admin")
    _until(lambda: all(_epoch(lab, n, gid) == 6 for n in "abcd"), within=60, what="two commits")
    lab.start("e")
    assert _epoch(lab, "e", gid) == 4  # restored from disk, two commits behind
    lab.meshctl("b", "groups", "send", gid, "after two commits")
    _until(lambda: b"after two commits" in _texts(lab, "e", gid), within=120,
           what="e reads the next message")  # fmt: skip
    assert _epoch(lab, "e", gid) == 6
    admins = {g["group_id"]: set(g["admins"]) for g in _groups(lab, "e")}[gid]
    assert admins == {addr["a"], addr["b"], addr["c"]}


@pytest.mark.timeout(480)
@pytest.mark.parametrize("cut", ["link-down", "nftables"])
def test_partition_two_admins_commit_at_once_then_converge(
    make_lab: LabFactory, cut: str
) -> None:
    lab, addr, gid = _five(make_lab)
    lab.meshctl("a", "groups", "role", gid, addr["e"], "admin")
    _until(lambda: all(_epoch(lab, n, gid) == 5 for n in "abcde"), within=90, what="e admin")
    if cut == "link-down":
        lab.link_down("c", "d")  # {a, b, c} | {d, e}
    else:
        lab.set_loss("c", "d", 100)  # nftables drops everything; the link stays up
    lab.meshctl("a", "groups", "role", gid, addr["b"], "admin")
    lab.meshctl("e", "groups", "role", gid, addr["d"], "admin")
    time.sleep(3.0)
    assert _epoch(lab, "a", gid) == _epoch(lab, "e", gid) == 6  # two branches of epoch 6
    if cut == "link-down":
        lab.link_up("c", "d")
    else:
        lab.set_loss("c", "d", 0)

    def converged() -> bool:
        for n in "abcde":  # members talk: a mismatched tip starts the chain exchange
            lab.meshctl(n, "groups", "send", gid, f"ping {n}", check=False)
        time.sleep(3.0)
        groups = [{g["group_id"]: g for g in _groups(lab, n)}.get(gid) for n in "abcde"]
        if any(g is None for g in groups):
            return False
        admin_sets = {frozenset(g["admins"]) for g in groups if g is not None}
        epochs = {int(g["epoch"]) for g in groups if g is not None}
        want = frozenset(addr[n] for n in "abde")
        return len(epochs) == 1 and admin_sets == {want}

    _until(converged, within=240, what="one epoch with both role changes")
    lab.meshctl("d", "groups", "send", gid, "converged")
    _until(lambda: all(b"converged" in _texts(lab, n, gid) for n in "abce"), within=90,
           what="everyone reads after the heal")  # fmt: skip
