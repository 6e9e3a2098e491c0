"""The app envelope: documented vectors, round trip, refusals naming the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.envelope import Envelope, decode_envelope, validate_app_id
from meshd.errors import FrameDecodeError, InvalidArgument

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"


def _vector(name: str) -> bytes:
    text = DOC.read_text()
    m = re.search(rf"```hex vector={re.escape(name)}\n(.*?)```", text, re.S)
    assert m, f"vector {name} missing from {DOC}"
    return bytes.fromhex("".join(m.group(1).split()))


@pytest.mark.parametrize(
    ("name", "app", "content"),
    [
        ("app-envelope-chat", "chat", b"hello"),
        ("app-envelope-notes", "org.example.notes-2", b"\x00\x01"),
    ],
)
def test_documented_vectors(name: str, app: str, content: bytes) -> None:
    data = _vector(name)
    assert decode_envelope(data) == Envelope(app, content)
    assert Envelope(app, content).encode() == data


app_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=64)


@given(app_ids, st.binary(max_size=512))
def test_round_trip(app: str, content: bytes) -> None:
    assert decode_envelope(Envelope(app, content).encode()) == Envelope(app, content)


@given(st.binary(max_size=80))
def test_decoder_never_raises_anything_untyped(data: bytes) -> None:
    try:
        env = decode_envelope(data)
    except FrameDecodeError:
        return
    assert validate_app_id(env.app_id) == env.app_id


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"", "envelope"),
        (b"\x01", "envelope"),
        (b"\x02\x01a", "version"),
        (b"\x01\x00", "app_id"),
        (b"\x01\x41" + b"a" * 65, "app_id"),
        (b"\x01\x05abc", "app_id"),
        (b"\x01\x03ABC", "app_id"),
        (b"\x01\x02\xff\xfe", "app_id"),
    ],
)
def test_refusals_name_the_field(data: bytes, field: str) -> None:
    with pytest.raises(FrameDecodeError) as info:
        decode_envelope(data)
    assert info.value.field == field


@pytest.mark.parametrize("app", ["", "Chat", "a b", "x" * 65, "é", "a/b"])
def test_bad_app_ids(app: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_app_id(app)
    assert info.value.field == "app_id"
