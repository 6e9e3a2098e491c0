"""The BLE fragment codec: round trips at every MTU, loss/duplication, bad input."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.errors import FrameDecodeError, WireError
from meshd.transports.ble_fragment import (
    FIRST,
    LAST,
    MAX_MESSAGE,
    Fragmenter,
    Reassembler,
    decode_varint,
    encode_varint,
    fragment,
    overhead,
)

PIPE_HEADER = 1  # the session byte ble_session puts in front of every fragment


def _payload_room(mtu: int) -> int:
    return mtu - 3 - PIPE_HEADER


@given(st.integers(0, MAX_MESSAGE))
def test_varint_round_trip(value: int) -> None:
    data = encode_varint(value)
    assert len(data) <= 3
    assert decode_varint(b"x" + data, 1) == (value, 1 + len(data))


def test_varint_errors_are_typed() -> None:
    with pytest.raises(FrameDecodeError, match="truncated"):
        decode_varint(b"\x80", 0)
    with pytest.raises(FrameDecodeError, match="longer"):
        decode_varint(b"\x80\x80\x80\x01", 0)
    with pytest.raises(FrameDecodeError, match="non-minimal"):
        decode_varint(b"\x81\x00", 0)
    with pytest.raises(WireError):
        encode_varint(MAX_MESSAGE + 1)


@settings(max_examples=150, deadline=None)
@given(
    mtu=st.integers(23, 517),
    messages=st.lists(st.binary(min_size=0, max_size=3000), min_size=1, max_size=8),
)
def test_round_trip_at_any_mtu(mtu: int, messages: list[bytes]) -> None:
    room = _payload_room(mtu)
    tx, rx = Fragmenter(), Reassembler()
    got = []
    for msg in messages:
        frags = tx.fragments(msg, room)
        assert all(len(f) <= room for f in frags)
        # <= 5 bytes of fragment header (+1 session byte = 6) on every fragment
        assert all(len(f) - len(msg) <= 5 for f in frags if len(frags) == 1)
        for f in frags:
            out = rx.feed("k", f, now=0.0)
            if out is not None:
                got.append(out)
    assert got == messages
    assert rx.partials == 0 and rx.reserved_bytes == 0


def test_overhead_is_at_most_six_bytes_per_fragment_with_the_session_byte() -> None:
    for mtu in (23, 185, 517):
        room = _payload_room(mtu)
        frags = fragment(bytes(50_000), 7, room)
        first_header = len(frags[0]) - (room - 2 - 3)
        assert first_header <= 5 and first_header + PIPE_HEADER <= 6
        payload = sum(len(f) for f in frags) - 2 * len(frags) - 3
        assert payload == 50_000
        assert overhead(50_000, room) == 2 * len(frags) + 3
    assert overhead(10, 20) == 2  # a single fragment: flags + id only


@settings(max_examples=200, deadline=None)
@given(
    mtu=st.integers(23, 517),
    messages=st.lists(st.binary(min_size=0, max_size=2000), min_size=1, max_size=10),
    seed=st.integers(0, 2**32 - 1),
    loss=st.floats(0.0, 0.5),
    dup=st.floats(0.0, 0.5),
)
def test_loss_and_duplication_never_yield_a_wrong_message(
    mtu: int, messages: list[bytes], seed: int, loss: float, dup: float
) -> None:
    rng = random.Random(seed)
    room = _payload_room(mtu)
    tx, rx = Fragmenter(), Reassembler()
    sent = [(m, tx.fragments(m, room)) for m in messages]
    wire: list[bytes] = []
    for _, frags in sent:
        for f in frags:
            if rng.random() < loss:
                continue
            wire.append(f)
            if rng.random() < dup:
                wire.append(f)
    got: list[bytes] = []
    for f in wire:
        try:
            out = rx.feed("k", f, now=0.0)
        except FrameDecodeError:
            continue
        if out is not None:
            got.append(out)
    # Every delivered message is one that was sent, in order, never twice in a row
    # from one duplicated fragment, and never one whose fragments were lost.
    intact = [m for m, frags in sent if all(f in wire for f in frags)]
    it = iter(messages)
    for out in got:
        assert any(out == m for m in it), "delivered a message that was not sent (in order)"
    assert len(got) <= len(messages)
    assert all(m in got for m in intact if messages.count(m) == 1)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=30))
def test_bad_fragments_raise_only_frame_decode_error(junk: list[bytes]) -> None:
    rx = Reassembler(max_message=1000, max_bytes=2000, max_partials=2)
    for i, data in enumerate(junk):
        try:
            out = rx.feed(i % 3, data, now=float(i))
        except FrameDecodeError:
            continue
        assert out is None or len(out) <= 1000
    assert rx.reserved_bytes <= 2000 and rx.partials <= 2


def test_errors_name_what_is_wrong() -> None:
    rx = Reassembler(max_message=100, max_bytes=200)
    with pytest.raises(FrameDecodeError, match="fragment of 1 bytes"):
        rx.feed("k", b"\x80", now=0)
    with pytest.raises(FrameDecodeError, match="without a first"):
        rx.feed("k", bytes((LAST | 1, 0)) + b"x", now=0)
    with pytest.raises(FrameDecodeError, match="exceeds 100"):
        rx.feed("k", bytes((FIRST, 0)) + encode_varint(101) + b"x", now=0)
    rx.feed("k", bytes((FIRST, 5)) + encode_varint(10) + b"abc", now=0)
    with pytest.raises(FrameDecodeError, match="out of sequence"):
        rx.feed("k", bytes((2, 5)) + b"def", now=0)
    rx.feed("k", bytes((FIRST, 5)) + encode_varint(4) + b"abc", now=0)
    with pytest.raises(FrameDecodeError, match="exceed the message length"):
        rx.feed("k", bytes((LAST | 1, 5)) + b"de", now=0)
    rx.feed("k", bytes((FIRST, 6)) + encode_varint(6) + b"abc", now=0)
    with pytest.raises(FrameDecodeError, match="header said 6"):
        rx.feed("k", bytes((LAST | 1, 6)) + b"d", now=0)
    assert rx.partials == 0 and rx.reserved_bytes == 0


def test_bounds_evict_oldest_and_timeouts_expire() -> None:
    rx = Reassembler(max_message=100, max_bytes=150, max_partials=2, timeout=5.0)
    for key in ("a", "b"):
        rx.feed(key, bytes((FIRST, 0)) + encode_varint(60) + b"x", now=0.0)
    assert rx.partials == 2 and rx.reserved_bytes == 120
    rx.feed("c", bytes((FIRST, 0)) + encode_varint(60) + b"x", now=1.0)  # evicts "a"
    assert set(rx.keys()) == {"b", "c"} and rx.evicted == 1
    with pytest.raises(FrameDecodeError, match=r"out of sequence|without a first"):
        rx.feed("a", bytes((1, 0)) + b"y", now=1.0)
    assert rx.expire(now=5.5) == 1  # "b" started at 0.0
    assert set(rx.keys()) == {"c"}
    rx.forget("c")
    assert rx.partials == 0 and rx.reserved_bytes == 0


def test_duplicate_single_fragment_is_delivered_once() -> None:
    rx = Reassembler()
    (f,) = fragment(b"hello", 3, 100)
    assert rx.feed("k", f, now=0) == b"hello"
    assert rx.feed("k", f, now=0) is None
    (g,) = fragment(b"hello", 4, 100)
    assert rx.feed("k", g, now=0) == b"hello"
