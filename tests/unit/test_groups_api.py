"""Group events reach the API event stream with their group id split out."""

from __future__ import annotations

from meshd.address import NodeAddress
from meshd.api import convert
from meshd.api.v1 import messaging_pb2 as mpb
from meshd.node_api import AppEvent, AppEventKind

A = NodeAddress(bytes(range(16)))


def test_every_group_event_kind_converts() -> None:
    kinds = [k for k in AppEventKind if k.value.startswith("group_")]
    assert len(kinds) == 7
    seen = set()
    for i, kind in enumerate(kinds):
        ev = convert.event(AppEvent(i, kind, 1.0, peer=A, detail="group=0a0b role=admin by=x"))
        assert ev.WhichOneof("kind") == "group"
        assert (ev.group.group_id, ev.group.detail, ev.group.peer) == (
            "0a0b",
            "role=admin by=x",
            A.text,
        )
        seen.add(ev.group.kind)
    assert len(seen) == 7 and mpb.GROUP_EVENT_KIND_UNSPECIFIED not in seen


def test_meshctl_watch_line_for_a_group_event() -> None:
    from meshctl.format import event_line

    ev = convert.event(
        AppEvent(
            9, AppEventKind.GROUP_ROLE_CHANGED, 1.0, peer=A, detail="group=0a0b role=admin by=x"
        )
    )
    line = event_line(ev)
    assert "group 0a0b role changed" in line and A.text in line and "(role=admin by=x)" in line


def test_group_id_in_api_message_and_meshctl_history() -> None:
    from meshctl.format import history_table
    from meshd.node_api import Direction, MessageRecord
    from meshd.router.events import DeliveryState

    gid = bytes(range(32))
    sent = MessageRecord(b"\x01" * 16, "chat", Direction.OUTGOING, A, b"hi all", 1.0,
                         DeliveryState.DELIVERED, None, None, 5, group_id=gid)  # fmt: skip
    one = MessageRecord(b"\x02" * 8, "chat", Direction.INCOMING, A, b"1:1", 2.0, None, None,
                        1, 6)  # fmt: skip
    pb_sent, pb_one = convert.message(sent), convert.message(one)
    assert (pb_sent.group_id, pb_one.group_id) == (gid.hex(), "")
    head, *rows = history_table([pb_sent, pb_one]).splitlines()
    assert head.split() == ["TIME", "DIR", "PEER", "GROUP", "STATE", "ID", "TEXT"]
    assert "(all members)" in rows[0] and gid.hex()[:16] in rows[0] and "delivered" in rows[0]
    assert gid.hex()[:16] not in rows[1] and "from" in rows[1]
    assert "GROUP" not in history_table([pb_one])  # 1:1 only: the table as before
