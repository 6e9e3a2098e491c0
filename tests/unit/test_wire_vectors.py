"""The hex vectors in docs/wire-format.md decode and re-encode byte for byte."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshd.address import BROADCAST
from meshd.router.bodies import (
    decode_announce,
    decode_link_ack,
    decode_path_error,
    decode_path_reply,
    decode_path_request,
    encode_link_ack,
)
from meshd.router.frames import FrameFlags, FrameType, decode_frame, peek_type

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"
_BLOCK = re.compile(r"```hex vector=([\w-]+)\n(.*?)```", re.S)


def _vectors() -> dict[str, bytes]:
    found = {name: bytes.fromhex("".join(text.split())) for name, text in _BLOCK.findall(
        DOC.read_text(encoding="utf-8"))}
    return found


VECTORS = _vectors()
MINE = ("header-data", "announce", "path-request", "path-reply", "path-error", "link-ack")


def test_the_doc_has_a_vector_for_the_header_and_every_routing_body() -> None:
    assert set(MINE) <= set(VECTORS)


# Routed frames: the routing vectors and the end-to-end ones (other sections of the doc,
# e.g. the app envelope, hold bodies that are not whole frames).
ROUTED = sorted(n for n in VECTORS if (n in MINE and n != "link-ack") or n.startswith("e2e-"))


@pytest.mark.parametrize("name", ROUTED)
def test_every_routed_vector_round_trips_through_the_header_codec(name: str) -> None:
    data = VECTORS[name]
    frame = decode_frame(data)
    assert frame.encode() == data


def test_header_vector_fields() -> None:
    frame = decode_frame(VECTORS["header-data"])
    assert frame.type is FrameType.DATA
    assert frame.flags == FrameFlags.ACK_REQUESTED | FrameFlags.CUSTODY_ALLOWED
    assert (frame.ttl, frame.hops, frame.attempt) == (32, 3, 1)
    assert frame.frame_id == bytes.fromhex("0102030405060708")
    assert frame.body == b"opaque"


def test_announce_vector() -> None:
    frame = decode_frame(VECTORS["announce"])
    assert frame.type is FrameType.ANNOUNCE and frame.dst == BROADCAST and frame.ttl == 1
    announce = decode_announce(frame.body)
    assert announce.encode() == frame.body
    assert announce.verify()
    assert announce.address == frame.src
    assert (announce.seq, announce.battery, announce.charging) == (7, 72, True)
    assert announce.cluster_id == 0x1A2B3C4D and announce.extensions == b"ext"


def test_path_request_vector() -> None:
    frame = decode_frame(VECTORS["path-request"])
    request = decode_path_request(frame.body)
    assert request.encode() == frame.body
    assert (request.origin_seq, request.cost, len(request.covered)) == (7, 37, 2)


def test_path_reply_vector() -> None:
    frame = decode_frame(VECTORS["path-reply"])
    reply = decode_path_reply(frame.body)
    assert reply.encode() == frame.body
    assert reply.announce.verify() and reply.announce.address == frame.src
    assert (reply.cost, reply.lifetime, reply.announce.seq) == (48, 900, 9)


def test_path_error_vector() -> None:
    frame = decode_frame(VECTORS["path-error"])
    error = decode_path_error(frame.body)
    assert error.encode() == frame.body
    assert [seq for _, seq in error.unreachable] == [5, 0xFFFFFFFF]


def test_link_ack_vector() -> None:
    data = VECTORS["link-ack"]
    assert peek_type(data) is FrameType.LINK_ACK
    acks = decode_link_ack(data)
    assert encode_link_ack(acks) == data
    assert acks[1] == (bytes.fromhex("1112131415161718"), 2)


def test_a_flipped_signature_bit_in_the_announce_vector_fails_verification() -> None:
    data = bytearray(VECTORS["announce"])
    data[-1] ^= 0x01
    announce = decode_announce(bytes(data[46:]))
    assert not announce.verify()
