"""meshctl's tables, durations and event lines."""

from __future__ import annotations

import json

from google.protobuf.timestamp_pb2 import Timestamp

from meshctl import format as fmt
from meshd.api.v1 import messaging_pb2 as mpb
from meshd.api.v1 import node_pb2 as npb

ADDR = "aeaqcaibaeaqcaibaeaqcaibahgiy"


def test_table_aligns_columns_and_strips_trailing_blanks() -> None:
    out = fmt.table(["A", "LONGER"], [["xxxx", "1"], ["y", ""]])
    assert out.splitlines() == ["A     LONGER", "xxxx  1", "y"]


def test_duration() -> None:
    assert fmt.duration(0) == "0s"
    assert fmt.duration(59.9) == "59s"
    assert fmt.duration(61) == "1m 1s"
    assert fmt.duration(3 * 3600 + 120) == "3h 2m"
    assert fmt.duration(2 * 86400 + 3600) == "2d 1h"
    assert fmt.duration(-5) == "0s"


def test_until() -> None:
    assert fmt.until(Timestamp(seconds=1000), now=900) == "in 1m 40s"
    assert fmt.until(Timestamp(seconds=1000), now=1001) == "expired"
    assert fmt.until(Timestamp(), now=1) == "-"


def test_payload_text() -> None:
    assert fmt.payload_text(b"hello\nworld") == "hello world"
    assert fmt.payload_text(b"\xff\xfe") == "<2 bytes>"
    long = fmt.payload_text(b"x" * 100)
    assert len(long) == 60 and long.endswith("…")


def test_status_text_lists_fields_and_transports() -> None:
    resp = npb.GetStatusResponse(
        status=npb.NodeStatus(address=ADDR, version="0.1.0", uptime_s=3725, neighbours=2,
                              routes=5, outbox=1, state_dir="/var/lib/meshd"),
        caller=npb.CallerInfo(uid=1000, gid=1000, pid=42, app_id="chat", is_admin=False),
    )  # fmt: skip
    tr = npb.Transport(name="inet", state=npb.TRANSPORT_STATE_RUNNING, links=2,
                       local_endpoints=["0.0.0.0:4717"])  # fmt: skip
    lines = fmt.status_text(resp, [tr]).splitlines()
    assert lines[0] == f"address     {ADDR}"
    assert "uptime      1h 2m" in lines
    assert "state dir   /var/lib/meshd" in lines
    assert "caller      uid 1000 gid 1000 pid 42, app chat" in lines
    assert lines[-2].split() == ["TRANSPORT", "STATE", "LINKS", "ENDPOINTS", "DETAIL"]
    assert lines[-1].split() == ["inet", "running", "2", "0.0.0.0:4717", "-"]


def test_neighbours_and_routes_tables() -> None:
    n = npb.Neighbour(address=ADDR, kind=npb.LINK_KIND_INET, quality=0.875, keep=True,
                      up_since=Timestamp(seconds=1000))  # fmt: skip
    n.battery = 80
    rows = fmt.neighbours_table([n], now=1090).splitlines()
    assert rows[0].split() == ["ADDRESS", "LINK", "QUALITY", "BATTERY", "KEEP", "UP"]
    assert rows[1].split() == [ADDR, "inet", "0.88", "80%", "yes", "1m", "30s"]
    assert fmt.neighbours_table([], now=0) == "no neighbours"
    r = npb.Route(dst=ADDR, next_hop=ADDR, hops=3, cost=3.5, expires_at=Timestamp(seconds=100))
    assert fmt.routes_table([r], now=40).splitlines()[1].split() == [
        ADDR, ADDR, "3", "3.50", "in", "1m", "0s"
    ]  # fmt: skip
    assert fmt.routes_table([], now=0) == "no routes"


def test_history_table() -> None:
    out = mpb.Message(message_id="ab" * 16, direction=mpb.DIRECTION_OUTGOING, peer=ADDR,
                      payload=b"hi", state=mpb.DELIVERY_STATE_FAILED, reason="expired")  # fmt: skip
    inc = mpb.Message(message_id="cd" * 16, direction=mpb.DIRECTION_INCOMING, peer=ADDR,
                      payload=b"yo")  # fmt: skip
    inc.hops = 2
    lines = fmt.history_table([out, inc]).splitlines()
    assert lines[0].split() == ["TIME", "DIR", "PEER", "STATE", "ID", "TEXT"]
    assert lines[1].split() == ["-", "to", ADDR, "failed", "(expired)", "ab" * 8, "hi"]
    assert lines[2].split() == ["-", "from", ADDR, "2", "hops", "cd" * 8, "yo"]
    inc.hops = 1
    assert fmt.history_table([inc]).splitlines()[1].split()[3:5] == ["1", "hop"]


def test_event_lines() -> None:
    ev = mpb.Event(cursor=12)
    ev.delivery_state.message_id = "ab" * 16
    ev.delivery_state.dst = ADDR
    ev.delivery_state.state = mpb.DELIVERY_STATE_DELIVERED
    assert fmt.event_line(ev) == f"    12  -  delivered {'ab' * 8} to {ADDR}"
    rx = mpb.Event(cursor=13)
    rx.message_received.message.peer = ADDR
    rx.message_received.message.payload = b"hello"
    rx.message_received.message.message_id = "cd" * 16
    assert fmt.event_line(rx).endswith(f"message from {ADDR} ({'cd' * 8}): hello")
    up = mpb.Event(cursor=14)
    up.neighbour_up.peer = ADDR
    assert fmt.event_line(up).endswith(f"neighbour up {ADDR}")
    assert fmt.event_line(mpb.Event(cursor=15)).endswith("unknown event (newer meshd?)")


def test_json_uses_proto_names_and_enum_names() -> None:
    ev = mpb.Event(cursor=3)
    ev.delivery_state.state = mpb.DELIVERY_STATE_QUEUED
    doc = json.loads(fmt.to_json(ev))
    assert doc["cursor"] == "3"  # proto3 JSON: 64-bit integers are strings
    assert doc["delivery_state"]["state"] == "DELIVERY_STATE_QUEUED"
    assert "message_id" in doc["delivery_state"]
