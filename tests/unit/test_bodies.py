"""Routing body codecs: round trips, field-naming errors, and fuzzing (only
FrameDecodeError ever escapes a decoder)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity
from meshd.errors import FrameDecodeError
from meshd.router.announce import OwnAnnounce
from meshd.router.bodies import (
    BATTERY_UNKNOWN,
    PREQ_FULL,
    Announce,
    PathError,
    PathReply,
    PathRequest,
    decode_announce,
    decode_link_ack,
    decode_path_error,
    decode_path_reply,
    decode_path_request,
    encode_link_ack,
    wire_cost,
)

IDENTITY = Identity.from_seed(bytes(range(64)))
prefixes = st.lists(st.binary(min_size=4, max_size=4), max_size=32).map(tuple)
DECODERS = [decode_announce, decode_path_request, decode_path_reply, decode_path_error,
            decode_link_ack]


def _announce(**changes: object) -> bytes:
    own = OwnAnnounce(IDENTITY)
    own.update(**changes)
    return own.encoded()


@pytest.mark.parametrize("decoder", DECODERS)
@settings(max_examples=300)
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_only_raise_frame_decode_error(decoder: object, data: bytes) -> None:
    assert callable(decoder)
    with contextlib.suppress(FrameDecodeError):
        decoder(data)


@pytest.mark.parametrize("decoder", [decode_announce, decode_path_reply])
@given(data=st.data())
def test_mutated_valid_bodies_only_raise_frame_decode_error(
    decoder: object, data: st.DataObject
) -> None:
    assert callable(decoder)
    body = bytearray(_announce(battery=50, neighbours=(b"abcd",), extensions=b"x"))
    if decoder is decode_path_reply:
        body = bytearray(b"\x00\x10\x03\x84" + bytes(8)) + body
    index = data.draw(st.integers(0, len(body) - 1))
    body[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    with contextlib.suppress(FrameDecodeError):
        decoder(bytes(body[:cut]))


@given(
    battery=st.integers(0, 100) | st.just(BATTERY_UNKNOWN),
    charging=st.booleans(),
    cluster=st.integers(0, 2**32 - 1),
    neighbours=prefixes,
    extensions=st.binary(max_size=100),
)
@settings(max_examples=30, deadline=None)
def test_announce_round_trips_and_verifies(
    battery: int, charging: bool, cluster: int, neighbours: tuple[bytes, ...], extensions: bytes
) -> None:
    body = _announce(battery=battery, charging=charging, cluster_id=cluster,
                     neighbours=neighbours, extensions=extensions)
    announce = decode_announce(body)
    assert announce.encode() == body
    assert announce.verify()
    assert announce.address == IDENTITY.address
    assert (announce.battery, announce.charging, announce.neighbours) == (
        battery, charging, neighbours)


def test_an_announce_with_a_changed_field_no_longer_verifies() -> None:
    announce = decode_announce(_announce(battery=80))
    forged = Announce(announce.signing_key, announce.exchange_key, announce.seq, 10,
                      announce.charging, announce.degree, announce.cluster_id,
                      announce.capabilities, announce.neighbours, announce.extensions,
                      announce.signature)
    assert not forged.verify()


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 65535),
       st.sampled_from([0, 1, 2, 4, 7]), prefixes, st.binary(max_size=300))
def test_path_request_round_trips(
    origin_seq: int, dst_seq: int, cost: int, flags: int, covered: tuple[bytes, ...],
    ann: bytes,
) -> None:
    request = PathRequest(origin_seq, dst_seq, cost, flags, covered, ann)
    assert decode_path_request(request.encode()) == request


def test_path_reply_round_trips() -> None:
    reply = PathReply(123, 900, b"r" * 8, decode_announce(_announce(battery=5)))
    assert decode_path_reply(reply.encode()) == reply


@given(st.lists(st.tuples(st.binary(min_size=16, max_size=16).map(NodeAddress),
                          st.integers(0, 2**32 - 1)), min_size=1, max_size=64))
def test_path_error_round_trips(entries: list[tuple[NodeAddress, int]]) -> None:
    error = PathError(tuple(entries))
    assert decode_path_error(error.encode()) == error


@given(st.lists(st.tuples(st.binary(min_size=8, max_size=8), st.integers(0, 255)),
                min_size=1, max_size=64))
def test_link_ack_round_trips(acks: list[tuple[bytes, int]]) -> None:
    assert decode_link_ack(encode_link_ack(acks)) == acks


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: PathRequest(2**32, 0, 0).encode(), "origin_seq"),
        (lambda: PathRequest(0, 0, 70000).encode(), "cost"),
        (lambda: PathRequest(0, 0, 0, flags=0x80).encode(), "flags"),
        (lambda: PathRequest(0, 0, 0, covered=(b"abc",)).encode(), "covered"),
        (lambda: PathError(()).encode(), "unreachable"),
        (lambda: encode_link_ack([]), "acks"),
        (lambda: encode_link_ack([(b"short", 0)]), "frame_id"),
        (lambda: decode_path_request(bytes(10) + b"\x80" + bytes(3)), "flags"),
        (lambda: decode_announce(bytes(70)), "announce"),
        (lambda: decode_link_ack(b"\x01\x40\x01" + bytes(8)), "acks"),
        (lambda: decode_path_error(b"\x02" + bytes(20)), "unreachable"),
        (lambda: _announce(battery=101), "battery"),
    ],
)
def test_bad_values_raise_errors_naming_the_field(make: object, field: str) -> None:
    assert callable(make)
    with pytest.raises(FrameDecodeError) as info:
        make()
    assert info.value.field == field


def test_wire_cost_saturates_and_never_goes_negative() -> None:
    assert wire_cost(-3.0) == 0
    assert wire_cost(1.5) == 24
    assert wire_cost(1e9) == 0xFFFF
    assert PREQ_FULL == 0x04
