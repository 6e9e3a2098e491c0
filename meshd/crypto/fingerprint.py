"""Fingerprints people compare: a 60-digit safety number for a pair of nodes and a short
fingerprint of one node. Derivation (and a test vector) in docs/identity.md.

The safety number is modelled on Signal's numeric fingerprint (libsignal
``NumericFingerprintGenerator``, version 2): each side's Ed25519 key is hashed with
SHA-512 5200 times (about 5 ms here, which is the point: it makes searching for a key
whose number collides with a target's that much dearer), the first 30 bytes become
6 x 5 digits, and the two 30-digit halves are sorted, so both ends display the same
number whatever the order.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from meshd.crypto.identity import KEY_LEN
from meshd.errors import InvalidArgument

SAFETY_DOMAIN = b"meshd safety number v1\x00"
SHORT_DOMAIN = b"meshd fingerprint v1\x00"
ITERATIONS = 5200
SAFETY_DIGITS = 60
_GROUP = 5
_SEPARATORS = re.compile(r"[\s\-_.:]+")


def _check_key(key: bytes, field: str) -> None:
    if len(key) != KEY_LEN:
        raise InvalidArgument(f"an Ed25519 public key is {KEY_LEN} bytes", field=field)


def half(signing_key: bytes) -> str:
    """One node's 30 digits: SHA-512 iterated over domain + key, 6 x (5 bytes mod 10^5)."""
    _check_key(signing_key, "signing_key")
    digest = hashlib.sha512(SAFETY_DOMAIN + signing_key).digest()
    for _ in range(ITERATIONS - 1):
        digest = hashlib.sha512(digest + signing_key).digest()
    chunks = (int.from_bytes(digest[i : i + 5], "big") % 100_000 for i in range(0, 30, 5))
    return "".join(f"{c:05d}" for c in chunks)


def safety_number(key_a: bytes, key_b: bytes) -> str:
    """The 60 digits both nodes display for their pair: order-independent."""
    _check_key(key_a, "key_a")
    _check_key(key_b, "key_b")
    return "".join(sorted((half(key_a), half(key_b))))


def format_safety_number(digits: str) -> str:
    """``12345 67890 ...``: 12 groups of 5."""
    return " ".join(digits[i : i + _GROUP] for i in range(0, len(digits), _GROUP))


def parse_safety_number(text: str) -> str:
    """The 60 digits of what a user typed (spaces, dashes, dots allowed between digits)."""
    digits = _SEPARATORS.sub("", text)
    if not digits.isascii() or not digits.isdigit() or len(digits) != SAFETY_DIGITS:
        raise InvalidArgument(
            f"a safety number is {SAFETY_DIGITS} digits (groups of 5 may be separated by "
            f"spaces), got {len(digits)} characters",
            field="safety_number",
        )
    return digits


def matches(expected_digits: str, typed: str) -> bool:
    """Compare in constant time (the number is public, but no reason to leak timing)."""
    return hmac.compare_digest(expected_digits, parse_safety_number(typed))


def short_fingerprint(signing_key: bytes) -> str:
    """8 groups of 4 hex digits: the first 128 bits of SHA-256(domain + key)."""
    _check_key(signing_key, "signing_key")
    digest = hashlib.sha256(SHORT_DOMAIN + signing_key).hexdigest()[:32]
    return " ".join(digest[i : i + 4] for i in range(0, 32, 4))
