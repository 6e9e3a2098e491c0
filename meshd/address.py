"""Node addresses: 16 bytes derived from a node's Ed25519 public key.

The text form people see and type is base32 (RFC 4648, lower case, no padding) of the
16 address bytes followed by a 2-byte checksum (the first bytes of SHA-256 over the
address), so a mistyped address is refused rather than sent into the void.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from meshd.errors import AddressError

ADDRESS_LEN = 16
_CHECKSUM_LEN = 2
_DERIVE_CONTEXT = b"meshd-address-v1"
TEXT_LEN = 29  # ceil((16 + 2) * 8 / 5)


@dataclass(frozen=True, slots=True, order=True)
class NodeAddress:
    """A mesh node address (hashable, ordered, immutable)."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != ADDRESS_LEN:
            raise AddressError(f"a node address is {ADDRESS_LEN} bytes", field="address")

    @classmethod
    def from_public_key(cls, ed25519_public: bytes) -> NodeAddress:
        if len(ed25519_public) != 32:
            raise AddressError("an Ed25519 public key is 32 bytes", field="public_key")
        return cls(hashlib.sha256(_DERIVE_CONTEXT + ed25519_public).digest()[:ADDRESS_LEN])

    @classmethod
    def parse(cls, text: str, *, field: str = "address") -> NodeAddress:
        """Parse the checksummed text form (case-insensitive, dashes and spaces ignored)."""
        cleaned = text.strip().replace("-", "").replace(" ", "").upper()
        if len(cleaned) != TEXT_LEN:
            raise AddressError(
                f"expected {TEXT_LEN} base32 characters, got {len(cleaned)}", field=field
            )
        try:
            decoded = base64.b32decode(cleaned + "===")
        except ValueError as exc:
            raise AddressError("not base32 text", field=field) from exc
        raw, checksum = decoded[:ADDRESS_LEN], decoded[ADDRESS_LEN:]
        if checksum != _checksum(raw):
            raise AddressError("checksum mismatch (mistyped address?)", field=field)
        address = cls(raw)
        # 29 characters carry 145 bits for 144: the spare bit of the last character must be
        # zero, or two spellings would name one address and a typo there would slip through.
        if address.text != cleaned.lower():
            raise AddressError("last character is not canonical (mistyped address?)", field=field)
        return address

    @property
    def text(self) -> str:
        encoded = base64.b32encode(self.raw + _checksum(self.raw)).decode("ascii")
        return encoded.rstrip("=").lower()

    @property
    def short(self) -> str:
        """First 8 characters of the text form, for tables and logs."""
        return self.text[:8]

    @property
    def is_broadcast(self) -> bool:
        return self.raw == _BROADCAST_RAW

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"NodeAddress({self.short})"


def _checksum(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()[:_CHECKSUM_LEN]


_BROADCAST_RAW = b"\xff" * ADDRESS_LEN
BROADCAST = NodeAddress(_BROADCAST_RAW)
