"""Bounded length-prefixed record framing (meshd.transports.framing)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.errors import WireError
from meshd.transports.framing import (
    MAX_RECORD_BODY,
    RecordDecoder,
    RecordType,
    encode_header,
    encode_record,
)

records = st.lists(
    st.tuples(st.sampled_from(list(RecordType)), st.binary(max_size=300)), max_size=20
)


@settings(max_examples=100, deadline=None)
@given(records, st.lists(st.integers(1, 64), min_size=1, max_size=20))
def test_records_survive_any_split_of_the_stream(
    recs: list[tuple[RecordType, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(encode_record(t, body) for t, body in recs)
    decoder = RecordDecoder()
    got: list[tuple[int, bytes]] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got += [(t, body) for t, _, body in decoder.feed(stream[pos : pos + step])]
        pos += step
        i += 1
    assert got == [(int(t), body) for t, body in recs]
    assert decoder.buffered == 0


def test_many_records_in_one_read_and_header_is_returned() -> None:
    decoder = RecordDecoder()
    data = encode_record(RecordType.PING, b"a") * 100 + encode_record(RecordType.DATA, b"b")[:3]
    out = decoder.feed(data)
    assert len(out) == 100
    assert out[0] == (RecordType.PING, encode_header(RecordType.PING, 1), b"a")
    assert decoder.buffered == 3


def test_oversized_length_is_refused_before_buffering() -> None:
    decoder = RecordDecoder()
    with pytest.raises(WireError, match="exceeds") as info:
        decoder.feed(encode_header(RecordType.DATA, MAX_RECORD_BODY + 1))
    assert info.value.field == "record.length"
    small = RecordDecoder(max_body=10)
    with pytest.raises(WireError):
        small.feed(encode_header(RecordType.DATA, 11))
    assert RecordDecoder(max_body=10).feed(encode_record(RecordType.DATA, b"x" * 10))


def test_unknown_type_and_bad_arguments() -> None:
    with pytest.raises(WireError, match="type") as info:
        RecordDecoder().feed(b"\x7f\x00\x00\x01x")
    assert info.value.field == "record.type"
    with pytest.raises(WireError):
        encode_header(RecordType.DATA, 1 << 24)
    with pytest.raises(WireError):
        RecordDecoder(max_body=0)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_only_raises_wire_error(data: bytes) -> None:
    # Anything but a WireError (struct.error, IndexError...) fails the test.
    with contextlib.suppress(WireError):
        for rtype, header, body in RecordDecoder(max_body=4096).feed(data):
            assert len(header) == 4 and rtype in set(RecordType) and len(body) <= 4096


def test_big_record_in_pieces_then_a_split_header_then_a_small_record() -> None:
    big = encode_record(RecordType.DATA, b"B" * 60000)
    small = encode_record(RecordType.PING, b"s")
    decoder = RecordDecoder()
    got = []
    for i in range(0, len(big), 1000):
        got += decoder.feed(big[i : i + 1000])
    assert [body for _, _, body in got] == [b"B" * 60000]
    assert decoder.feed(small[:2]) == []
    assert [body for _, _, body in decoder.feed(small[2:])] == [b"s"]
    # A whole record after a completed big one plus a 2-byte tail is not held back.
    assert len(decoder.feed(big + small[:2])) == 1
    assert [body for _, _, body in decoder.feed(small[2:] + small)] == [b"s", b"s"]
    assert decoder.buffered == 0
