"""How an MLS member is bound to a meshd node identity.

Each node has a *separate* Ed25519 key for MLS signatures (key separation: the node key
signs mesh frames and handshakes, the MLS key signs RFC 9420 ``SignWithLabel`` content).
The node key endorses the MLS key, and the endorsement travels inside the MLS
BasicCredential's ``identity`` bytes, so any member can check from the ratchet tree alone
that a leaf belongs to a node address:

    identity = "MSHC" || 0x01 || node_key[32] || Ed25519_node(CONTEXT || mls_signature_key)[64]

The node address is derived from ``node_key`` as everywhere else
(:meth:`meshd.address.NodeAddress.from_public_key`), and the daemon's TOFU pins the node
key, so pinning transitively covers the MLS key. The MLS key is stored in the engine's
state directory (encrypted at rest when a key is given) and kept across restarts.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshd.crypto.identity import KEY_LEN, SIGNATURE_LEN, Identity, verify_signature
from meshd.errors import InvalidArgument

MAGIC = b"MSHC\x01"
CONTEXT = b"meshd-mls-credential-v1\x00"
IDENTITY_LEN = len(MAGIC) + KEY_LEN + SIGNATURE_LEN
SECRET_LEN = 2 * KEY_LEN  # mls-rs (OpenSSL provider) stores Ed25519 secrets as seed || public


@dataclass(frozen=True, slots=True)
class MlsSigner:
    """This node's MLS signature key pair and its endorsed credential identity."""

    secret_key: bytes  # seed || public, as mls-rs expects
    public_key: bytes
    identity: bytes  # the BasicCredential identity (endorsement included)

    @classmethod
    def generate(cls, node: Identity) -> MlsSigner:
        key = Ed25519PrivateKey.generate()
        seed = key.private_bytes_raw()
        public = key.public_key().public_bytes_raw()
        return cls(seed + public, public, endorse(node, public))

    @classmethod
    def from_bytes(cls, blob: bytes) -> MlsSigner:
        """Inverse of :meth:`to_bytes`; checks the pieces fit together."""
        if len(blob) != SECRET_LEN + IDENTITY_LEN:
            raise InvalidArgument("MLS signer record has the wrong length", field="mls_signer")
        secret, identity = blob[:SECRET_LEN], blob[SECRET_LEN:]
        public = secret[KEY_LEN:]
        derived = Ed25519PrivateKey.from_private_bytes(secret[:KEY_LEN]).public_key()
        if derived.public_bytes_raw() != public or parse_identity(identity, public) is None:
            raise InvalidArgument("MLS signer record is inconsistent", field="mls_signer")
        return cls(secret, public, identity)

    def to_bytes(self) -> bytes:
        return self.secret_key + self.identity

    @property
    def node_key(self) -> bytes:
        return self.identity[len(MAGIC) : len(MAGIC) + KEY_LEN]


def endorse(node: Identity, mls_signature_key: bytes) -> bytes:
    """The credential identity by which ``node`` vouches for ``mls_signature_key``."""
    if len(mls_signature_key) != KEY_LEN:
        raise InvalidArgument("an MLS signature key is 32 bytes", field="signature_key")
    signature = node.sign(CONTEXT + mls_signature_key)
    return MAGIC + node.public.signing_key + signature


def parse_identity(identity: bytes, mls_signature_key: bytes) -> bytes | None:
    """The endorsing node key if ``identity`` validly endorses the key, else None."""
    if len(identity) != IDENTITY_LEN or not identity.startswith(MAGIC):
        return None
    node_key = identity[len(MAGIC) : len(MAGIC) + KEY_LEN]
    signature = identity[len(MAGIC) + KEY_LEN :]
    if not verify_signature(node_key, signature, CONTEXT + mls_signature_key):
        return None
    return node_key
