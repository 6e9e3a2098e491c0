"""Safety numbers and short fingerprints: the documented vector, symmetry, parsing."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.crypto import fingerprint as fp
from meshd.crypto.identity import Identity
from meshd.errors import InvalidArgument

DOC = Path(__file__).resolve().parents[2] / "docs" / "identity.md"


def _vector() -> dict[str, str]:
    """The test vector lines of docs/identity.md: name -> value."""
    text = DOC.read_text()
    section = text[text.index("## Test vector") :]
    out: dict[str, str] = {}
    for m in re.finditer(r"^\s+(K_[AB]|half\(K_[AB]\)|safety number|short\(K_[AB]\))\s+=\s+(.+)$",
                         section, re.MULTILINE):  # fmt: skip
        out[m.group(1)] = m.group(2).strip()
    for m in re.finditer(r"(K_[AB]) = ([0-9a-f]{64})", section):
        out[m.group(1)] = m.group(2)
    return out


def test_documented_vector() -> None:
    v = _vector()
    a = Identity.from_seed(b"\x01" * 32 + b"\x03" * 32).public.signing_key
    b = Identity.from_seed(b"\x02" * 32 + b"\x04" * 32).public.signing_key
    assert (a.hex(), b.hex()) == (v["K_A"], v["K_B"])
    assert fp.half(a) == v["half(K_A)"]
    assert fp.half(b) == v["half(K_B)"]
    assert fp.format_safety_number(fp.safety_number(a, b)) == v["safety number"]
    assert fp.short_fingerprint(a) == v["short(K_A)"]
    assert fp.short_fingerprint(b) == v["short(K_B)"]


def test_half_matches_the_documented_derivation() -> None:
    """An independent transcription of docs/identity.md's pseudo-code."""
    key = bytes(range(32))
    h = hashlib.sha512(b"meshd safety number v1\x00" + key).digest()
    for _ in range(5199):
        h = hashlib.sha512(h + key).digest()
    expected = "".join(f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}"
                       for i in range(0, 30, 5))  # fmt: skip
    assert fp.half(key) == expected
    short = hashlib.sha256(b"meshd fingerprint v1\x00" + key).digest()[:16].hex()
    assert fp.short_fingerprint(key).replace(" ", "") == short


@settings(max_examples=10, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_symmetric_and_well_formed(a: bytes, b: bytes) -> None:
    number = fp.safety_number(a, b)
    assert number == fp.safety_number(b, a)
    assert len(number) == 60 and number.isdigit()
    assert number in (fp.half(a) + fp.half(b), fp.half(b) + fp.half(a))
    if a != b:
        assert fp.safety_number(a, a) != number


def test_one_key_bit_changes_the_number() -> None:
    a, b = b"\x11" * 32, b"\x22" * 32
    c = b"\x11" * 31 + b"\x10"
    assert fp.safety_number(a, b) != fp.safety_number(c, b)


def test_parse_and_match() -> None:
    a, b = b"\x11" * 32, b"\x22" * 32
    digits = fp.safety_number(a, b)
    assert fp.matches(digits, fp.format_safety_number(digits))
    assert fp.matches(digits, "-".join(fp.format_safety_number(digits).split()))
    wrong = ("1" if digits[0] != "1" else "2") + digits[1:]
    assert not fp.matches(digits, wrong)
    for bad in ("", "12345", digits + "1", digits[:-1] + "x", "\u0661" * 60):
        with pytest.raises(InvalidArgument) as err:
            fp.parse_safety_number(bad)
        assert err.value.field == "safety_number"


def test_bad_key_length_named() -> None:
    with pytest.raises(InvalidArgument) as err:
        fp.short_fingerprint(b"\x00" * 31)
    assert err.value.field == "signing_key"
    with pytest.raises(InvalidArgument) as err:
        fp.safety_number(b"\x00" * 32, b"")
    assert err.value.field == "key_b"
