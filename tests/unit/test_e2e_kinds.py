from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshd.e2e.kinds import PayloadFamily, family_of


def test_families_by_first_byte() -> None:
    assert family_of(b"") is PayloadFamily.UNKNOWN
    assert family_of(b"\x01\x03app") is PayloadFamily.PLAINTEXT
    assert family_of(b"\x10") is PayloadFamily.SESSION
    assert family_of(b"\x1f...") is PayloadFamily.SESSION
    assert family_of(b"\x20") is PayloadFamily.GROUP
    assert family_of(b"\x2f") is PayloadFamily.GROUP
    assert family_of(b"\x00") is PayloadFamily.UNKNOWN
    assert family_of(b"\x30") is PayloadFamily.UNKNOWN


@given(st.binary(max_size=8))
def test_every_payload_has_one_family(data: bytes) -> None:
    assert isinstance(family_of(data), PayloadFamily)
