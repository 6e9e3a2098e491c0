from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.address import NodeAddress
from meshd.errors import FrameDecodeError
from meshd.router.frames import HEADER_LEN, Frame, FrameFlags, FrameType, decode_frame

addresses = st.binary(min_size=16, max_size=16).map(NodeAddress)
routed_types = st.sampled_from([t for t in FrameType if t < 0x40])


@given(
    routed_types,
    st.binary(min_size=8, max_size=8),
    addresses,
    addresses,
    st.binary(max_size=512),
    st.integers(0, 15).map(FrameFlags),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
)
def test_header_round_trips(
    ftype: FrameType,
    frame_id: bytes,
    src: NodeAddress,
    dst: NodeAddress,
    body: bytes,
    flags: FrameFlags,
    ttl: int,
    hops: int,
    attempt: int,
) -> None:
    frame = Frame(ftype, frame_id, src, dst, body, flags, ttl, hops, attempt)
    data = frame.encode()
    assert len(data) == HEADER_LEN + len(body)
    assert decode_frame(data) == frame


@given(st.binary(max_size=200))
def test_decoder_never_raises_untyped(data: bytes) -> None:
    with contextlib.suppress(FrameDecodeError):
        decode_frame(data)


def test_unicast_header_is_at_most_48_bytes() -> None:
    assert HEADER_LEN <= 48


def test_unknown_version_is_refused() -> None:
    frame = Frame(FrameType.DATA, b"\0" * 8, NodeAddress(b"a" * 16), NodeAddress(b"b" * 16))
    with pytest.raises(FrameDecodeError, match="version"):
        decode_frame(b"\x02" + frame.encode()[1:])
