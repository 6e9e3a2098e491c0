"""A node's long-term identity: an Ed25519 signing key and an X25519 key-exchange key."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshd.address import NodeAddress
from meshd.errors import InvalidArgument

KEY_LEN = 32
SIGNATURE_LEN = 64
_PRIVATE_BLOB_MAGIC = b"MESHID1\x00"


@dataclass(frozen=True, slots=True)
class PublicIdentity:
    """The public half of an identity, as carried in announces and handshakes."""

    signing_key: bytes
    exchange_key: bytes

    def __post_init__(self) -> None:
        if len(self.signing_key) != KEY_LEN or len(self.exchange_key) != KEY_LEN:
            raise InvalidArgument("public keys are 32 bytes each", field="public_identity")

    @property
    def address(self) -> NodeAddress:
        return NodeAddress.from_public_key(self.signing_key)

    def verify(self, signature: bytes, data: bytes) -> bool:
        return verify_signature(self.signing_key, signature, data)


class Identity:
    """A node's private keys. Instances are passed in; there is no process-wide identity."""

    __slots__ = ("_exchange", "_public", "_signing")

    def __init__(self, signing: Ed25519PrivateKey, exchange: X25519PrivateKey) -> None:
        self._signing = signing
        self._exchange = exchange
        self._public = PublicIdentity(
            signing_key=signing.public_key().public_bytes_raw(),
            exchange_key=exchange.public_key().public_bytes_raw(),
        )

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Deterministic identity from 64 bytes of seed (tests and the simulator)."""
        if len(seed) != 2 * KEY_LEN:
            raise InvalidArgument("an identity seed is 64 bytes", field="seed")
        return cls(
            Ed25519PrivateKey.from_private_bytes(seed[:KEY_LEN]),
            X25519PrivateKey.from_private_bytes(seed[KEY_LEN:]),
        )

    @classmethod
    def from_private_bytes(cls, blob: bytes) -> Identity:
        if len(blob) != len(_PRIVATE_BLOB_MAGIC) + 2 * KEY_LEN or not blob.startswith(
            _PRIVATE_BLOB_MAGIC
        ):
            raise InvalidArgument("not a meshd identity blob", field="identity")
        return cls.from_seed(blob[len(_PRIVATE_BLOB_MAGIC) :])

    def private_bytes(self) -> bytes:
        """Serialize both private keys (the caller stores them 0600 / encrypted)."""
        return (
            _PRIVATE_BLOB_MAGIC
            + self._signing.private_bytes_raw()
            + self._exchange.private_bytes_raw()
        )

    @property
    def public(self) -> PublicIdentity:
        return self._public

    @property
    def address(self) -> NodeAddress:
        return self._public.address

    def sign(self, data: bytes) -> bytes:
        return self._signing.sign(data)

    def exchange(self, peer_exchange_key: bytes) -> bytes:
        """X25519 Diffie-Hellman with a peer's public exchange key."""
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

        return self._exchange.exchange(X25519PublicKey.from_public_bytes(peer_exchange_key))

    @property
    def exchange_private(self) -> X25519PrivateKey:
        return self._exchange

    @property
    def signing_private(self) -> Ed25519PrivateKey:
        return self._signing


def verify_signature(signing_key: bytes, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``data`` by ``signing_key``."""
    if len(signing_key) != KEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(signing_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
