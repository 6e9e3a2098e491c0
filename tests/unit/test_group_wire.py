"""Group payload codecs: doc vectors, round trips, and typed errors on any bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity
from meshd.e2e.group_wire import (
    Action,
    CatchUpRequest,
    CatchUpResponse,
    Fragment,
    GroupCommit,
    GroupData,
    GroupWelcome,
    LeaveRequest,
    Role,
    fragment,
)
from meshd.e2e.groups_state import Reassembler
from meshd.errors import FrameDecodeError

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"
_BLOCK = re.compile(r"```hex vector=(group-[\w-]+)\n(.*?)```", re.S)
VECTORS = {
    name: bytes.fromhex("".join(text.split()))
    for name, text in _BLOCK.findall(DOC.read_text(encoding="utf-8"))
}
ID = Identity.from_seed(bytes(range(64)))
DECODERS = (
    GroupData,
    GroupCommit,
    GroupWelcome,
    CatchUpRequest,
    CatchUpResponse,
    LeaveRequest,
    Fragment,
)


def test_doc_leave_vector() -> None:
    data = VECTORS["group-leave"]
    req = LeaveRequest.decode(data)
    assert (req.group_id, req.epoch, req.member_key) == (bytes(range(16)), 7, ID.public.signing_key)
    assert req.verify() and req.encode() == data
    assert NodeAddress.from_public_key(req.member_key).text == "xmltfd2j453orvk2vok3ckz7qpr3s"
    assert LeaveRequest(req.group_id, 7, req.member_key).signed(ID).encode() == data
    forged = LeaveRequest(req.group_id, 8, req.member_key, req.signature)
    assert not forged.verify()


def test_doc_catchup_and_fragment_vectors() -> None:
    req = CatchUpRequest.decode(VECTORS["group-catchup-request"])
    assert req == CatchUpRequest(bytes(range(16)), 5)
    assert req.encode() == VECTORS["group-catchup-request"]
    frag = Fragment.decode(VECTORS["group-fragment"])
    assert frag == Fragment(bytes(range(1, 9)), 1, 3, b"abc")
    assert frag.encode() == VECTORS["group-fragment"]


addresses = st.binary(min_size=16, max_size=16).map(NodeAddress)
roles = st.lists(st.tuples(addresses, st.sampled_from(Role)), max_size=5).map(tuple)
blobs = st.binary(min_size=1, max_size=200)
gids = st.binary(min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(Action), st.binary(min_size=32, max_size=32), roles, blobs)
def test_commit_round_trips_and_signature_binds_every_field(
    action: Action, parent: bytes, targets: tuple[tuple[NodeAddress, Role], ...], commit: bytes
) -> None:
    env = GroupCommit(action, ID.public.signing_key, parent, targets, commit).signed(ID)
    data = env.encode()
    back = GroupCommit.decode(data)
    assert back == env and back.verify()
    flipped = bytearray(data)
    flipped[1] ^= 1  # action
    try:
        assert not GroupCommit.decode(bytes(flipped)).verify()
    except FrameDecodeError as exc:
        assert exc.field == "action"


@settings(max_examples=40, deadline=None)
@given(gids, st.binary(min_size=32, max_size=32), st.text(max_size=20), roles, blobs)
def test_welcome_round_trips(
    gid: bytes, tip: bytes, name: str, members: tuple[tuple[NodeAddress, Role], ...], w: bytes
) -> None:
    welcome = GroupWelcome(gid, ID.public.signing_key, tip, name, members, w).signed(ID)
    back = GroupWelcome.decode(welcome.encode())
    assert back == welcome and back.verify()


@settings(max_examples=40, deadline=None)
@given(
    gids,
    st.lists(blobs, max_size=4),
    st.integers(0, 2**64 - 1),
    st.binary(min_size=8, max_size=8),
    blobs,
)
def test_small_payloads_round_trip(
    gid: bytes, commits: list[bytes], epoch: int, tip: bytes, mls: bytes
) -> None:
    assert CatchUpResponse.decode(CatchUpResponse(gid, tuple(commits)).encode()).commits == tuple(
        commits
    )
    assert CatchUpRequest.decode(CatchUpRequest(gid, epoch).encode()).from_epoch == epoch
    assert GroupData.decode(GroupData(tip, mls).encode()) == GroupData(tip, mls)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_value_or_a_typed_error_naming_the_field(data: bytes) -> None:
    for decoder in DECODERS:
        try:
            decoder.decode(data)
        except FrameDecodeError as exc:
            assert exc.field
        # anything else (ValueError, IndexError, struct.error) fails the test


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["group-leave", "group-catchup-request"]), st.data())
def test_truncated_or_extended_vectors_are_refused(name: str, data: st.DataObject) -> None:
    # (a fragment's chunk runs to the end: any longer fragment is a valid fragment)
    raw = VECTORS[name]
    cut = data.draw(st.integers(0, len(raw) - 1))
    for bad, match in ((raw[:cut], None), (raw + b"\x00", "trailing")):
        with pytest.raises(FrameDecodeError, match=match):
            if name == "group-leave":
                LeaveRequest.decode(bad)
            else:
                CatchUpRequest.decode(bad)


def test_field_names_in_errors() -> None:
    with pytest.raises(FrameDecodeError) as exc:
        GroupCommit.decode(b"\x21\x07" + bytes(100))
    assert exc.value.field == "action"
    with pytest.raises(FrameDecodeError) as exc:
        CatchUpRequest.decode(b"\x23\x00")
    assert exc.value.field == "group_id"
    with pytest.raises(FrameDecodeError) as exc:
        Fragment.decode(b"\x2f" + bytes(8) + b"\x00\x05\x00\x03x")
    assert exc.value.field == "index"
    with pytest.raises(FrameDecodeError) as exc:
        GroupData.decode(b"\x21" + bytes(9))
    assert exc.value.field == "kind"


@settings(max_examples=30, deadline=None)
@given(
    st.binary(min_size=1, max_size=5000), st.integers(64, 1000), st.randoms(use_true_random=False)
)
def test_fragments_reassemble_in_any_order(payload: bytes, max_len: int, rnd: object) -> None:
    import random

    assert isinstance(rnd, random.Random)
    parts = fragment(payload, max_len)
    assert all(len(p) <= max_len for p in parts)
    if len(parts) == 1:
        assert parts == [payload]
        return
    rnd.shuffle(parts)
    r = Reassembler()
    src = NodeAddress(bytes(16))
    results = [r.add(src, Fragment.decode(p), now=0.0) for p in parts]
    assert results[:-1] == [None] * (len(parts) - 1) and results[-1] == payload
