from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.address import BROADCAST, NodeAddress
from meshd.crypto.identity import Identity
from meshd.errors import AddressError


@given(st.binary(min_size=16, max_size=16))
def test_text_form_round_trips(raw: bytes) -> None:
    address = NodeAddress(raw)
    assert NodeAddress.parse(address.text) == address
    assert NodeAddress.parse(address.text.upper()) == address


def test_mistyped_address_is_refused_by_checksum() -> None:
    text = Identity.generate().address.text
    flipped = ("b" if text[3] != "b" else "c").join((text[:3], text[4:]))
    with pytest.raises(AddressError, match="checksum"):
        NodeAddress.parse(flipped)


@pytest.mark.parametrize("bad", ["", "abc", "!" * 29, "a" * 40])
def test_malformed_text_names_the_field(bad: str) -> None:
    with pytest.raises(AddressError) as info:
        NodeAddress.parse(bad, field="dst")
    assert info.value.field == "dst"


def test_address_is_bound_to_the_key() -> None:
    one, two = Identity.generate(), Identity.generate()
    assert one.address != two.address
    assert one.address == NodeAddress.from_public_key(one.public.signing_key)
    assert not one.address.is_broadcast and BROADCAST.is_broadcast


def test_non_canonical_last_character_is_refused() -> None:
    text = Identity.generate().address.text
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    twin = alphabet[alphabet.index(text[-1]) ^ 1]
    with pytest.raises(AddressError):
        NodeAddress.parse(text[:-1] + twin)
