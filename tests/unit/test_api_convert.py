"""Request validation and dataclass -> protobuf conversion of the API layer."""

from __future__ import annotations

import pytest
from google.protobuf.duration_pb2 import Duration

from meshd.address import NodeAddress
from meshd.api import convert
from meshd.api.caller import DEFAULT_APP_ID, app_id_from_metadata, validate_app_id
from meshd.api.v1 import messaging_pb2 as mpb
from meshd.errors import AddressError, InvalidArgument
from meshd.node_api import AppEvent, AppEventKind, Direction, MessageRecord
from meshd.router.events import DeliveryState

A = NodeAddress(bytes(range(16)))
B = NodeAddress(bytes(range(16, 32)))


def _record(**kw: object) -> MessageRecord:
    base: dict[str, object] = dict(
        message_id=b"\x01\x02" * 8, app_id="chat", direction=Direction.OUTGOING, peer=B,
        payload=b"hi", created_at=1_700_000_000.25, state=DeliveryState.QUEUED, reason=None,
        hops=None, cursor=7,
    )  # fmt: skip
    base.update(kw)
    return MessageRecord(**base)  # type: ignore[arg-type]


def test_bad_address_names_the_field() -> None:
    typo = A.text[:5] + ("a" if A.text[5] != "a" else "b") + A.text[6:]
    with pytest.raises(AddressError) as info:
        convert.parse_address(typo, field="dst")
    assert str(info.value).startswith("dst: checksum mismatch")
    with pytest.raises(InvalidArgument, match=r"^dst: required"):
        convert.parse_address("", field="dst")
    assert convert.parse_address(A.text.upper(), field="dst") == A


@pytest.mark.parametrize("text", ["xyz", "abc", "0" * 130, " "])
def test_bad_message_id(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        convert.parse_message_id(text)
    assert info.value.field == "message_id"


def test_message_id_roundtrip() -> None:
    assert convert.parse_message_id("0102ff") == b"\x01\x02\xff"


def test_history_limit() -> None:
    assert convert.history_limit(0) == convert.DEFAULT_HISTORY_LIMIT
    assert convert.history_limit(1000) == 1000
    with pytest.raises(InvalidArgument, match=r"^limit: at most 1000"):
        convert.history_limit(1001)


def test_cursor_bounds() -> None:
    assert convert.cursor_arg(0, field="after_cursor") == 0
    assert convert.cursor_arg(2**63 - 1, field="after_cursor") == 2**63 - 1
    with pytest.raises(InvalidArgument, match=r"^before_cursor: at most"):
        convert.cursor_arg(2**64 - 1, field="before_cursor")


def test_lifetime() -> None:
    assert convert.lifetime_seconds(mpb.SendMessageRequest()) is None
    req = mpb.SendMessageRequest(lifetime=Duration(seconds=90, nanos=500_000_000))
    assert convert.lifetime_seconds(req) == 90.5
    with pytest.raises(InvalidArgument, match=r"^lifetime: must be positive"):
        convert.lifetime_seconds(mpb.SendMessageRequest(lifetime=Duration(seconds=0)))


@pytest.mark.parametrize("good", ["default", "chat", "org.example.app-2_x", "a" * 64])
def test_valid_app_ids(good: str) -> None:
    assert validate_app_id(good) == good


@pytest.mark.parametrize("bad", ["", "Chat", "a b", "a/b", "a" * 65, "ü"])
def test_invalid_app_ids(bad: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_app_id(bad)
    assert info.value.field == "meshd-app"


def test_app_id_from_metadata() -> None:
    assert app_id_from_metadata(()) == DEFAULT_APP_ID
    assert app_id_from_metadata(None) == DEFAULT_APP_ID
    assert app_id_from_metadata((("other", "x"), ("meshd-app", "chat"))) == "chat"
    with pytest.raises(InvalidArgument, match="more than once"):
        app_id_from_metadata((("meshd-app", "a"), ("meshd-app", "b")))


def test_message_conversion() -> None:
    m = convert.message(_record())
    assert m.message_id == "0102" * 8
    assert m.direction == mpb.DIRECTION_OUTGOING and m.peer == B.text
    assert m.state == mpb.DELIVERY_STATE_QUEUED and not m.HasField("hops")
    assert m.created_at.seconds == 1_700_000_000 and m.created_at.nanos == 250_000_000
    assert m.cursor == 7 and m.app_id == "chat"
    incoming = convert.message(
        _record(direction=Direction.INCOMING, peer=A, state=None, hops=3, cursor=None)
    )
    assert incoming.direction == mpb.DIRECTION_INCOMING
    assert incoming.hops == 3 and incoming.state == mpb.DELIVERY_STATE_UNSPECIFIED
    assert incoming.cursor == 0


def test_every_delivery_state_has_a_wire_value() -> None:
    values = {convert.delivery_state(s) for s in DeliveryState}
    assert len(values) == len(DeliveryState)
    assert mpb.DELIVERY_STATE_UNSPECIFIED not in values


def test_event_conversion_covers_every_kind() -> None:
    delivered = _record(state=DeliveryState.FAILED, reason="lifetime over")
    cases = {
        AppEventKind.MESSAGE_RECEIVED: AppEvent(
            1, AppEventKind.MESSAGE_RECEIVED, 10.0, message=_record(direction=Direction.INCOMING)
        ),
        AppEventKind.DELIVERY_STATE: AppEvent(2, AppEventKind.DELIVERY_STATE, 11.0, delivered),
        AppEventKind.NEIGHBOUR_UP: AppEvent(3, AppEventKind.NEIGHBOUR_UP, 12.0, peer=A),
        AppEventKind.NEIGHBOUR_DOWN: AppEvent(4, AppEventKind.NEIGHBOUR_DOWN, 13.0, peer=A),
        AppEventKind.PATH_CHANGED: AppEvent(
            5, AppEventKind.PATH_CHANGED, 14.0, peer=B, detail="via x"
        ),
        AppEventKind.KEY_CHANGED: AppEvent(
            6, AppEventKind.KEY_CHANGED, 15.0, peer=A, detail="exchange key changed"
        ),
    }
    # The 1:1 session events all map to the one `session` oneof (checked in
    # test_session_events_convert below).
    session_kinds = {k for k in AppEventKind if k.value in convert_session_values()}
    group_kinds = {k for k in AppEventKind if k.value.startswith("group_")}  # test_groups_api
    assert set(cases) | session_kinds | group_kinds == set(AppEventKind)
    out = {kind: convert.event(ev) for kind, ev in cases.items()}
    assert [e.WhichOneof("kind") for e in out.values()] == [
        "message_received", "delivery_state", "neighbour_up", "neighbour_down", "path_changed",
        "key_changed",
    ]  # fmt: skip
    assert out[AppEventKind.MESSAGE_RECEIVED].message_received.message.payload == b"hi"
    d = out[AppEventKind.DELIVERY_STATE].delivery_state
    assert (d.message_id, d.dst, d.state, d.reason) == (
        "0102" * 8, B.text, mpb.DELIVERY_STATE_FAILED, "lifetime over"
    )  # fmt: skip
    assert out[AppEventKind.NEIGHBOUR_DOWN].neighbour_down.peer == A.text
    assert out[AppEventKind.PATH_CHANGED].path_changed.detail == "via x"
    k = out[AppEventKind.KEY_CHANGED].key_changed
    assert (k.peer, k.detail) == (A.text, "exchange key changed")
    assert [e.cursor for e in out.values()] == [1, 2, 3, 4, 5, 6]
    assert out[AppEventKind.PATH_CHANGED].at.seconds == 14


def test_address_text_cache_names_each_address_right() -> None:
    addresses = [NodeAddress(bytes([i]) * 16) for i in range(40)]
    for address in addresses + addresses[::-1]:  # second pass: from the cache
        assert convert.address_text(address) == address.text


def convert_session_values() -> set[str]:
    return {k.value for k in convert._SESSION_EVENTS}


def test_session_events_convert() -> None:
    for i, kind in enumerate(convert._SESSION_EVENTS, start=1):
        out = convert.event(AppEvent(i, kind, 20.0, peer=A, detail="incoming"))
        assert out.WhichOneof("kind") == "session"
        assert (out.session.peer, out.session.detail) == (A.text, "incoming")
        assert mpb.SessionEventKind.Name(out.session.kind).endswith(kind.name)


def test_received_event_is_built_field_for_field() -> None:
    """The message is filled in place inside the event: the same Event as built from
    parts (created_at present even at the epoch, hops kept when 0, the group id)."""
    rec = _record(direction=Direction.INCOMING, peer=A, state=None, hops=0, cursor=9,
                  created_at=0.0, group_id=b"\xab")  # fmt: skip
    got = convert.event(AppEvent(9, AppEventKind.MESSAGE_RECEIVED, 1.5, message=rec))
    want = mpb.Event(
        cursor=9,
        at=convert.timestamp(1.5),
        message_received=mpb.MessageReceived(message=mpb.Message(
            message_id=rec.message_id.hex(), direction=mpb.DIRECTION_INCOMING, peer=A.text,
            payload=rec.payload, created_at=convert.timestamp(0.0), app_id=rec.app_id,
            cursor=9, group_id="ab", hops=0,
        )),
    )  # fmt: skip
    assert got == want
    assert got.message_received.message.HasField("created_at")
    assert got.message_received.message.HasField("hops")
    assert got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)
