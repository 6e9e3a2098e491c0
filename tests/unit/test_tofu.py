"""TOFU policy and the contacts table: pin, refuse a changed key, trust, verify, names."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.crypto import fingerprint, tofu
from meshd.crypto.identity import Identity, PublicIdentity
from meshd.errors import FailedPrecondition, InvalidArgument, NotFound
from meshd.store import Store
from meshd.store.contacts import ContactBook
from meshd.store.schema import MIGRATIONS, open_database

ME = Identity.from_seed(b"\x07" * 64)
PEER = Identity.from_seed(b"\x01" * 32 + b"\x03" * 32)
OTHER = Identity.from_seed(b"\x02" * 32 + b"\x04" * 32)


def _rekeyed(ident: Identity, x: bytes) -> PublicIdentity:
    """The same Ed25519 key with another X25519 key (what TOFU must catch)."""
    other = Identity.from_seed(ident.private_bytes()[8:40] + x * 32)
    return other.public


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "meshd.db")
    yield s
    s.close()


def test_first_identity_pinned_then_same() -> None:
    obs = tofu.observe(None, PEER.address, PEER.public, now=1.0)
    assert obs.verdict is tofu.Verdict.PINNED and not obs.refused
    assert obs.contact is not None and obs.contact.identity == PEER.public
    again = tofu.observe(obs.contact, PEER.address, PEER.public, now=2.0)
    assert again.verdict is tofu.Verdict.SAME and again.contact is not None
    assert again.contact.last_seen == 2.0 and again.contact.first_seen == 1.0


def test_changed_exchange_key_refused_until_trusted() -> None:
    pinned = tofu.observe(None, PEER.address, PEER.public, now=1.0).contact
    assert pinned is not None
    new = _rekeyed(PEER, b"\x09")
    obs = tofu.observe(pinned, PEER.address, new, now=2.0)
    assert obs.verdict is tofu.Verdict.KEY_CHANGED and obs.refused
    assert obs.contact is not None
    assert obs.contact.identity == PEER.public  # the pinned key stays in use
    assert obs.contact.pending_exchange_key == new.exchange_key
    repeat = tofu.observe(obs.contact, PEER.address, new, now=3.0)
    assert repeat.verdict is tofu.Verdict.STILL_CHANGED and repeat.refused
    third = tofu.observe(obs.contact, PEER.address, _rekeyed(PEER, b"\x0a"), now=4.0)
    assert third.verdict is tofu.Verdict.KEY_CHANGED  # another new key: reported again
    trusted = tofu.trust(obs.contact)
    assert trusted.identity == new and trusted.pending_exchange_key is None
    assert tofu.observe(trusted, PEER.address, new, now=5.0).verdict is tofu.Verdict.SAME
    assert tofu.observe(trusted, PEER.address, PEER.public, now=6.0).verdict \
        is tofu.Verdict.KEY_CHANGED  # going back to the old key is a change too
    with pytest.raises(FailedPrecondition):
        tofu.trust(trusted)


def test_other_signing_key_cannot_claim_an_address() -> None:
    obs = tofu.observe(None, PEER.address, OTHER.public, now=1.0)
    assert obs.verdict is tofu.Verdict.WRONG_ADDRESS and obs.contact is None and obs.refused


def test_verify_match_and_mismatch() -> None:
    c = tofu.observe(None, PEER.address, PEER.public, now=1.0).contact
    assert c is not None
    number = fingerprint.safety_number(ME.public.signing_key, PEER.public.signing_key)
    assert tofu.verify(c, ME.public.signing_key, fingerprint.format_safety_number(number)).verified
    wrong = fingerprint.safety_number(ME.public.signing_key, OTHER.public.signing_key)
    with pytest.raises(FailedPrecondition) as err:
        tofu.verify(c, ME.public.signing_key, wrong)
    assert err.value.field == "safety_number" and "does not match" in str(err.value)
    with pytest.raises(InvalidArgument):
        tofu.verify(c, ME.public.signing_key, "123")


def test_names() -> None:
    assert tofu.validate_name("  Alice ") == "Alice"
    assert tofu.validate_name("") == ""
    for bad in ("x" * 65, "a\nb", "bell\x07"):
        with pytest.raises(InvalidArgument) as err:
            tofu.validate_name(bad)
        assert err.value.field == "name"


def test_contact_book_persists_pins_and_changes(store: Store, tmp_path: Path) -> None:
    book = ContactBook(store)
    assert book.observe(PEER.address, PEER.public, now=1.0).verdict is tofu.Verdict.PINNED
    new = _rekeyed(PEER, b"\x09")
    assert book.observe(PEER.address, new, now=2.0).verdict is tofu.Verdict.KEY_CHANGED
    store.commit()
    fresh = ContactBook(store)  # no cache: read back from SQLite
    c = fresh.require(PEER.address)
    assert c.identity == PEER.public and c.pending_exchange_key == new.exchange_key
    assert c.key_changed_at == 2.0
    assert fresh.observe(PEER.address, new, now=3.0).verdict is tofu.Verdict.STILL_CHANGED
    fresh.put(tofu.trust(c))
    fresh.put(tofu.verify(fresh.require(PEER.address), ME.public.signing_key,
                          fingerprint.safety_number(ME.public.signing_key,
                                                    PEER.public.signing_key)))  # fmt: skip
    store.commit()
    again = ContactBook(store).require(PEER.address)
    assert again.identity == new and again.verified and again.pending_exchange_key is None
    assert [x.address for x in ContactBook(store).list()] == [PEER.address]
    with pytest.raises(NotFound) as err:
        book.require(OTHER.address)
    assert err.value.field == "address"


def test_migration_pins_peers_already_seen(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(
        "INSERT INTO peers VALUES (?, ?, ?, 10.0, 20.0, 'x')",
        (PEER.address.raw, PEER.public.signing_key, PEER.public.exchange_key),
    )
    conn.close()
    open_database(path).close()
    store = Store.open(path)
    try:
        c = ContactBook(store).require(PEER.address)
        assert c.identity == PEER.public and (c.first_seen, c.last_seen) == (10.0, 20.0)
        assert not c.verified and c.name == ""
    finally:
        store.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.integers(0, 3), st.just("trust")), max_size=25))
def test_pin_only_moves_on_trust(steps: list[int | str]) -> None:
    """Whatever keys show up, the pinned key changes only on trust, to the pending key;
    KEY_CHANGED is reported exactly when a key differs from both pinned and pending."""
    keys = [_rekeyed(PEER, bytes([0x30 + i])) for i in range(4)]
    contact = tofu.observe(None, PEER.address, keys[0], now=0.0).contact
    assert contact is not None
    for t, step in enumerate(steps, start=1):
        if step == "trust":
            if contact.pending_exchange_key is None:
                with pytest.raises(FailedPrecondition):
                    tofu.trust(contact)
            else:
                pending = contact.pending_exchange_key
                contact = tofu.trust(contact)
                assert contact.exchange_key == pending and contact.pending_exchange_key is None
            continue
        assert isinstance(step, int)
        seen = keys[step]
        before = contact
        obs = tofu.observe(contact, PEER.address, seen, now=float(t))
        assert obs.contact is not None
        contact = obs.contact
        assert contact.exchange_key == before.exchange_key  # never applied by observing
        assert contact.signing_key == PEER.public.signing_key
        new = seen.exchange_key not in (before.exchange_key, before.pending_exchange_key)
        assert (obs.verdict is tofu.Verdict.KEY_CHANGED) == new
