"""The node's identity, TOFU and contacts: what ``Node`` delegates ``ContactsApi`` to.

Learned identities (announces, link handshakes) go through ``observe``: the first one
for an address is pinned, a changed exchange key is refused and raised once as a
``KEY_CHANGED`` event in every app's stream (and a warning in the log).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from meshd.address import NodeAddress
from meshd.crypto import fingerprint, tofu
from meshd.crypto.identity import Identity, PublicIdentity
from meshd.errors import PermissionDenied
from meshd.node_api import AppEventKind, Caller, ContactInfo, IdentityInfo
from meshd.store import Store
from meshd.store.contacts import ContactBook


class IdentityService:
    """Owned by one node; event-loop thread only."""

    def __init__(
        self,
        identity: Identity,
        store: Store,
        *,
        commit: Callable[[], Awaitable[None]],
        log: Any,
        daemon_uid: int | None = None,
    ) -> None:
        self._identity = identity
        self._store = store
        self._commit = commit
        self._log = log
        self._daemon_uid = os.getuid() if daemon_uid is None else daemon_uid
        self.book = ContactBook(store)

    # --- learning identities ----------------------------------------------------------
    def observe(self, address: NodeAddress, seen: PublicIdentity, *, wall: float) -> tofu.Verdict:
        """Apply TOFU to an identity learned from the mesh (the caller commits)."""
        if address == self._identity.address:
            return tofu.Verdict.SAME
        obs = self.book.observe(address, seen, now=wall)
        if obs.verdict is tofu.Verdict.KEY_CHANGED:
            assert obs.contact is not None
            pinned, new = obs.contact.exchange_key.hex(), seen.exchange_key.hex()
            detail = (
                f"exchange key changed from {pinned[:16]}... to {new[:16]}...: refused until "
                f"`meshctl contacts trust {address.text}`"
            )
            self._store.append_event(None, AppEventKind.KEY_CHANGED, wall, peer=address,
                                     detail=detail)  # fmt: skip
            self._log.warning("key_changed", peer=address.text, pinned=pinned, refused=new)
        elif obs.verdict is tofu.Verdict.WRONG_ADDRESS:
            self._log.warning("identity_address_mismatch", peer=address.text)
        return obs.verdict

    def pinned(self, address: NodeAddress) -> PublicIdentity | None:
        """The identity end-to-end encryption must use for ``address`` (None: never seen)."""
        contact = self.book.get(address)
        return contact.identity if contact is not None else None

    # --- ContactsApi --------------------------------------------------------------------
    def identity_info(self) -> IdentityInfo:
        pub = self._identity.public
        return IdentityInfo(
            address=self._identity.address,
            signing_key=pub.signing_key,
            exchange_key=pub.exchange_key,
            fingerprint=fingerprint.short_fingerprint(pub.signing_key),
        )

    def list_contacts(self) -> list[ContactInfo]:
        return [self._info(c, with_number=False) for c in self.book.list()]

    def get_contact(self, address: NodeAddress) -> ContactInfo:
        return self._info(self.book.require(address), with_number=True)

    async def set_contact_name(
        self, caller: Caller, address: NodeAddress, name: str
    ) -> ContactInfo:
        self._may_change(caller)
        clean = tofu.validate_name(name)
        contact = self.book.require(address)
        return await self._save(replace(contact, name=clean))

    async def trust_key_change(self, caller: Caller, address: NodeAddress) -> ContactInfo:
        self._may_change(caller)
        before = self.book.require(address)
        after = tofu.trust(before)
        self._log.info("key_trusted", peer=address.text, exchange_key=after.exchange_key.hex())
        return await self._save(after)

    async def verify_contact(
        self, caller: Caller, address: NodeAddress, safety_number: str
    ) -> ContactInfo:
        self._may_change(caller)
        contact = self.book.require(address)
        verified = tofu.verify(contact, self._identity.public.signing_key, safety_number)
        self._log.info("contact_verified", peer=address.text)
        return await self._save(verified)

    def _may_change(self, caller: Caller) -> None:
        if not (caller.is_admin or caller.uid == self._daemon_uid):
            raise PermissionDenied(
                "changing contacts needs root, group meshd-admin or meshd's own user"
            )

    async def _save(self, contact: tofu.Contact) -> ContactInfo:
        self.book.put(contact)
        await self._commit()
        return self._info(contact, with_number=True)

    def _info(self, contact: tofu.Contact, *, with_number: bool) -> ContactInfo:
        number = (
            fingerprint.safety_number(self._identity.public.signing_key, contact.signing_key)
            if with_number
            else None
        )
        return ContactInfo(
            contact=contact,
            fingerprint=fingerprint.short_fingerprint(contact.signing_key),
            safety_number=number,
        )

