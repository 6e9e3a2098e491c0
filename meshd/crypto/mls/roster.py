"""Rosters and member identities for :mod:`.mlsrs` (what the mls-rs binding lacks).

The binding has no roster getter: the roster comes from ``Group.export_tree()`` parsed
with our RFC 9420 codec (:mod:`.wire`). ``SigningIdentity`` is opaque (equality only,
26 us per comparison): to check who sent an application message, or to name members to
``remove_members``, the engine rebuilds a member's SigningIdentity from the tree (a
throw-away ``Client`` built from the public key alone yields an equal identity).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from meshd.crypto.mls import wire
from meshd.crypto.mls._binding import mls
from meshd.crypto.mls.credential import parse_identity
from meshd.crypto.mls.engine import Member
from meshd.errors import WireError

_IDENTITY_CACHE_MAX = 4096


class Roster:
    """The members of one epoch, and the verified ones by address."""

    __slots__ = ("by_address", "members")

    def __init__(self, members: tuple[Member, ...]) -> None:
        self.members = members
        self.by_address = {m.address: m for m in members if m.verified}


def read_roster(tree: bytes, endorser: Callable[[bytes, bytes], bytes | None]) -> Roster:
    """The roster of an exported ratchet tree; ``endorser`` checks each credential."""
    members = []
    for index, leaf in wire.tree_leaves(tree):
        signature_key: bytes = leaf["signature_key"]
        try:
            identity = wire.basic_identity(leaf, "ratchet_tree")
        except WireError:
            members.append(Member(index, b"", signature_key, False, b""))
            continue
        node_key = endorser(identity, signature_key)
        claimed = identity[5:37] if node_key is None else node_key
        verified = node_key is not None
        members.append(Member(index, claimed, signature_key, verified, identity))
    return Roster(tuple(members))


class MemberIdentities:
    """Per-engine caches of credential checks and rebuilt mls-rs SigningIdentities."""

    __slots__ = ("_identities", "_verified")

    def __init__(self) -> None:
        self._identities: dict[tuple[bytes, bytes], Any] = {}
        self._verified: dict[tuple[bytes, bytes], bytes | None] = {}

    def endorser(self, identity: bytes, signature_key: bytes) -> bytes | None:
        """The node key endorsing this credential, or None (see ``parse_identity``)."""
        key = (identity, signature_key)
        if key not in self._verified:
            if len(self._verified) >= _IDENTITY_CACHE_MAX:
                self._verified.clear()
            self._verified[key] = parse_identity(identity, signature_key)
        return self._verified[key]

    def signing_identity(self, member: Member) -> Any:
        """An mls-rs SigningIdentity equal to the member's (built from public data only)."""
        key = (member.identity, member.signature_key)
        found = self._identities.get(key)
        if found is None:
            if len(self._identities) >= _IDENTITY_CACHE_MAX:
                self._identities.clear()
            # Client::new never uses the secret key until something is signed, and this
            # client signs nothing: it only mints the (credential, public key) identity.
            dummy = keypair(member.signature_key, os.urandom(64))
            client = mls.Client(key[0], dummy, mls.client_config_default())
            found = self._identities[key] = client.signing_identity()
        return found


def keypair(public_key: bytes, secret_key: bytes) -> Any:
    """An mls-rs signature key pair of the engine's cipher suite."""
    return mls.SignatureKeypair(
        cipher_suite=mls.CipherSuite.CURVE25519_AES128,
        public_key=mls.SignaturePublicKey(bytes=public_key),
        secret_key=mls.SignatureSecretKey(bytes=secret_key),
    )
