"""Trust on first use: pin the first public identity seen for an address. Sans-IO.

The address is a hash of the Ed25519 key, so another Ed25519 key cannot claim it (such an
identity is rejected outright). The X25519 exchange key (and later the MLS credential) is
not bound to the address: a different one is refused, kept as *pending*, and reported
once per distinct key until the user trusts it. The caller persists the returned contact.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from meshd.address import NodeAddress
from meshd.crypto import fingerprint
from meshd.crypto.identity import PublicIdentity
from meshd.errors import FailedPrecondition, InvalidArgument

MAX_NAME_LEN = 64


@dataclass(frozen=True, slots=True)
class Contact:
    """A pinned peer: its keys, what the user said about it, and a refused key if any."""

    address: NodeAddress
    signing_key: bytes
    exchange_key: bytes  # the pinned (in use) key
    first_seen: float  # unix time
    last_seen: float
    name: str = ""
    verified: bool = False
    pending_exchange_key: bytes | None = None  # a refused key awaiting `trust`
    key_changed_at: float | None = None

    @property
    def identity(self) -> PublicIdentity:
        """The pinned public identity (what end-to-end encryption must use)."""
        return PublicIdentity(self.signing_key, self.exchange_key)


class Verdict(enum.Enum):
    PINNED = "pinned"  # first sight: pinned now
    SAME = "same"  # matches the pinned keys
    KEY_CHANGED = "key_changed"  # a new, different exchange key: refused, event due
    STILL_CHANGED = "still_changed"  # the already pending key again: refused, no new event
    WRONG_ADDRESS = "wrong_address"  # the signing key does not hash to the address


@dataclass(frozen=True, slots=True)
class Observation:
    verdict: Verdict
    contact: Contact | None  # what to store (None: store nothing)

    @property
    def refused(self) -> bool:
        return self.verdict in (Verdict.KEY_CHANGED, Verdict.STILL_CHANGED, Verdict.WRONG_ADDRESS)


def observe(
    pinned: Contact | None, address: NodeAddress, seen: PublicIdentity, *, now: float
) -> Observation:
    """Decide what a newly learned identity for ``address`` means against the pin."""
    if seen.address != address:
        return Observation(Verdict.WRONG_ADDRESS, None)
    if pinned is None:
        return Observation(
            Verdict.PINNED,
            Contact(address, seen.signing_key, seen.exchange_key, first_seen=now, last_seen=now),
        )
    if seen.exchange_key == pinned.exchange_key:
        return Observation(Verdict.SAME, replace(pinned, last_seen=now))
    if seen.exchange_key == pinned.pending_exchange_key:
        return Observation(Verdict.STILL_CHANGED, replace(pinned, last_seen=now))
    changed = replace(
        pinned, last_seen=now, pending_exchange_key=seen.exchange_key, key_changed_at=now
    )
    return Observation(Verdict.KEY_CHANGED, changed)


def trust(contact: Contact) -> Contact:
    """The user accepts the pending key: it becomes the pinned one."""
    if contact.pending_exchange_key is None:
        raise FailedPrecondition(
            f"no changed key to trust for {contact.address.text}", field="address"
        )
    return replace(
        contact,
        exchange_key=contact.pending_exchange_key,
        pending_exchange_key=None,
        key_changed_at=None,
    )


def verify(contact: Contact, own_signing_key: bytes, typed: str) -> Contact:
    """Mark verified when ``typed`` is the pair's safety number; a mismatch raises."""
    expected = fingerprint.safety_number(own_signing_key, contact.signing_key)
    if not fingerprint.matches(expected, typed):  # parse errors raise InvalidArgument
        raise FailedPrecondition(
            f"safety number does not match the one for {contact.address.text}: compare "
            "again on both devices (the contact was not marked verified)",
            field="safety_number",
        )
    return replace(contact, verified=True)


def validate_name(name: str) -> str:
    """A petname: printable, at most 64 characters, surrounding blanks dropped."""
    clean = name.strip()
    if len(clean) > MAX_NAME_LEN:
        raise InvalidArgument(f"at most {MAX_NAME_LEN} characters", field="name")
    if not clean.isprintable():
        raise InvalidArgument("must not contain control characters", field="name")
    return clean
