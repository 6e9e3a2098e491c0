"""Connection requests and encrypted 1:1 messages between real daemons in network
namespaces: a 3-node line x-y-z (a-b-c here) where x and z are not neighbours."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import pytest

from meshd.testing.netns import NetnsLab, chain
from tests.system.conftest import LabFactory

pytestmark = [pytest.mark.slow, pytest.mark.netns]


def _until(what: str, pred: Callable[[], Any], within: float) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _incoming(lab: NetnsLab, node: str) -> list[dict[str, Any]]:
    history = lab.meshctl_json(node, "history")["messages"]
    return [m for m in history if m["direction"] == "DIRECTION_INCOMING"]


@pytest.mark.timeout(180)
def test_connection_request_over_two_hops_accept_then_first_message(
    make_lab: LabFactory,
) -> None:
    nodes, links = chain(3)
    lab = make_lab(nodes, links)
    lab.start("a")
    lab.start("b")
    lab.start("c", "--accept-from", "contacts")
    for node in nodes:
        lab.daemon(node).wait_ready(timeout=20)
    a_addr = lab.meshctl_json("a", "status")["status"]["address"]
    c_addr = lab.meshctl_json("c", "status")["status"]["address"]
    assert lab.meshctl_json("c", "policy") == {"accept_from": "contacts"}
    text = "hello z, this is x: may we talk?"

    sent = lab.meshctl_json("a", "connect", c_addr, text)
    assert sent["request"]["peer"] == c_addr

    def incoming_request() -> list[dict[str, Any]]:
        reqs = lab.meshctl_json("c", "requests", "list").get("requests", [])
        return [r for r in reqs if r["peer"] == a_addr and r.get("held_messages")]

    reqs = _until("z sees x's request", incoming_request, 90)
    assert reqs[0]["direction"] == "REQUEST_DIRECTION_INCOMING"
    assert _incoming(lab, "c") == []  # held, not delivered, until accepted

    lab.meshctl("c", "requests", "accept", a_addr)
    got = _until("x's first message at z", lambda: _incoming(lab, "c"), 30)
    assert [base64.b64decode(m["payload"]) for m in got] == [text.encode()]
    assert got[0]["peer"] == a_addr and got[0]["hops"] == 2

    # x's side: the request is answered and the session established.
    _until("x's outgoing request cleared",
           lambda: not lab.meshctl_json("a", "requests", "list").get("requests"), 30)  # fmt: skip
    session = lab.meshctl_json("a", "session", c_addr)["session"]
    assert session["established"] is True
    assert lab.meshctl_json("c", "session", a_addr)["session"]["group_id"] == session["group_id"]

    # Now an ordinary send --wait works both ways in the session.
    back = lab.meshctl_json("c", "send", a_addr, "welcome, x", "--wait", "--timeout", "60",
                            timeout=70)  # fmt: skip
    assert back["state"] == "DELIVERY_STATE_DELIVERED", back

    # The relay y never saw the text: not in its store, MLS state or log.
    lab.stop("b")
    relay = lab.daemon("b")
    files = [p for p in relay.state_dir.rglob("*") if p.is_file()] + [relay.log_path]
    for path in files:
        assert text.encode() not in path.read_bytes(), path
