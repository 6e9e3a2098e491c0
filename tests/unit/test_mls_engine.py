"""Engine scenarios from issue 4: 1:1 and 3-member groups, add/remove/self-update,
exporter agreement, tampered/replayed/forged ciphertexts, restart."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.crypto.identity import Identity
from meshd.crypto.mls import wire
from meshd.crypto.mls._binding import BindingError, mls
from meshd.crypto.mls.engine import ApplicationMessage, EpochChanged, MlsEngine
from meshd.crypto.mls.mlsrs import MlsRsEngine
from meshd.errors import (
    AlreadyExists,
    CryptoError,
    EpochAheadError,
    InvalidArgument,
    NotFound,
    UndecryptableError,
    WireError,
)

NOW = 1_800_000_000.0

Factory = Callable[[str], MlsRsEngine]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Factory]:
    """Engines named by a letter; the same name reopens the same state and identity."""
    identities: dict[str, Identity] = {}
    opened: list[MlsRsEngine] = []

    def factory(name: str) -> MlsRsEngine:
        identity = identities.setdefault(name, Identity.generate())
        engine = MlsRsEngine(tmp_path / name, identity)
        opened.append(engine)
        return engine

    yield factory
    for engine in opened:
        engine.close()


def app(engine: MlsEngine, message: bytes) -> ApplicationMessage:
    result = engine.process(message)
    assert isinstance(result, ApplicationMessage)
    return result


def commit(engine: MlsEngine, message: bytes) -> EpochChanged:
    result = engine.process(message)
    assert isinstance(result, EpochChanged)
    return result


def pair(make: Factory) -> tuple[MlsRsEngine, MlsRsEngine, bytes]:
    a, b = make("a"), make("b")
    group = a.create_group()
    kp = b.generate_key_package(now=NOW)
    out = a.add_members(group, [kp.data], now=NOW)
    assert out.welcome is not None
    joined = b.join_group(out.welcome, now=NOW)
    assert joined.group_id == group
    return a, b, group


def trio(make: Factory) -> tuple[MlsRsEngine, MlsRsEngine, MlsRsEngine, bytes]:
    a, b, c = make("a"), make("b"), make("c")
    group = a.create_group(b"trio")
    kps = [b.generate_key_package(now=NOW).data, c.generate_key_package(now=NOW).data]
    out = a.add_members(group, kps, now=NOW)
    assert out.welcome is not None
    b.join_group(out.welcome, now=NOW)
    c.join_group(out.welcome, now=NOW)
    return a, b, c, group


def test_one_to_one_both_directions(make: Factory) -> None:
    a, b, group = pair(make)
    assert a.epoch(group) == b.epoch(group) == 1
    got = app(b, a.encrypt(group, b"hello b"))
    assert (got.plaintext, got.sender.address, got.epoch) == (b"hello b", a.address, 1)
    got = app(a, b.encrypt(group, b"hello a"))
    assert got.plaintext == b"hello a"
    assert got.sender.node_key == b.node_key
    assert [m.address for m in a.members(group)] == [m.address for m in b.members(group)]
    assert {m.node_key for m in a.members(group)} == {a.node_key, b.node_key}
    assert all(m.verified for m in a.members(group))


def test_three_members_talk_and_agree_on_exporter(make: Factory) -> None:
    a, b, c, group = trio(make)
    assert a.epoch(group) == b.epoch(group) == c.epoch(group) == 1
    ciphertext = c.encrypt(group, b"from c")
    assert app(a, ciphertext).sender.node_key == c.node_key
    assert app(b, ciphertext).plaintext == b"from c"
    secrets = {e.export_secret(group, b"meshd test", b"ctx", 32) for e in (a, b, c)}
    assert len(secrets) == 1
    assert a.export_secret(group, b"meshd test", b"other", 32) not in secrets


def test_member_added_by_another_member_and_committer_is_named(make: Factory) -> None:
    a, b, group = pair(make)
    c = make("c")
    out = b.add_members(group, [c.generate_key_package(now=NOW).data], now=NOW)
    assert out.epoch == 2 and out.welcome is not None
    changed = commit(a, out.commit)
    assert changed.epoch == 2 and not changed.removed
    assert changed.committer is not None and changed.committer.node_key == b.node_key
    assert len(changed.members) == 3
    c.join_group(out.welcome, now=NOW)
    assert app(c, a.encrypt(group, b"welcome c")).plaintext == b"welcome c"
    exported = {e.export_secret(group, b"x", b"", 16) for e in (a, b, c)}
    assert len(exported) == 1


def test_peek_shows_commit_sender_before_it_is_applied(make: Factory) -> None:
    a, _b, c, group = trio(make)
    out = c.self_update(group)
    info = a.peek(out.commit)
    assert info.content_type == wire.CONTENT_COMMIT and info.group_id == group
    sender = next(m for m in a.members(group) if m.leaf_index == info.sender_leaf)
    assert sender.node_key == c.node_key
    assert a.epoch(group) == 1  # peeking applied nothing


def test_removed_member_cannot_decrypt_later_messages(make: Factory) -> None:
    a, b, c, group = trio(make)
    out = a.remove_members(group, [c.address])
    assert commit(b, out.commit).epoch == 2
    removed = commit(c, out.commit)
    assert removed.removed and c.groups() == ()
    later = a.encrypt(group, b"not for c")
    assert app(b, later).plaintext == b"not for c"
    with pytest.raises(NotFound):
        c.process(later)
    assert len(a.members(group)) == 2


def test_member_ignoring_its_removal_still_cannot_decrypt(make: Factory) -> None:
    a, b, c, group = trio(make)
    out = a.remove_members(group, [c.address])
    commit(b, out.commit)
    later = b.encrypt(group, b"epoch 2 only")
    with pytest.raises(EpochAheadError):
        c.process(later)  # c never applied the commit: still at epoch 1
    # Below the engine's epoch check, mls-rs itself has no key for epoch 2.
    with pytest.raises(BindingError):
        c._groups[group].handle.process_incoming_message(mls.Message.from_bytes(later))
    assert app(a, later).plaintext == b"epoch 2 only"


def test_self_update_carries_a_path_and_rotates_secrets(make: Factory) -> None:
    a, b, c, group = trio(make)
    before = a.export_secret(group, b"x", b"", 32)
    out = b.self_update(group)
    assert out.epoch == 2 and out.welcome is None
    parsed = wire.MLS_MESSAGE.parse(out.commit)
    assert parsed["body"]["content"]["body"]["path"] is not None  # new leaf key (PCS)
    commit(a, out.commit)
    commit(c, out.commit)
    after = {e.export_secret(group, b"x", b"", 32) for e in (a, b, c)}
    assert len(after) == 1 and before not in after
    assert app(c, b.encrypt(group, b"post update")).plaintext == b"post update"


def test_tampered_ciphertext_is_rejected(make: Factory) -> None:
    a, b, group = pair(make)
    ciphertext = a.encrypt(group, b"x" * 100)
    for position in (len(ciphertext) - 1, len(ciphertext) - 40, len(ciphertext) // 2):
        tampered = bytearray(ciphertext)
        tampered[position] ^= 0x01
        with pytest.raises((UndecryptableError, WireError)):
            b.process(bytes(tampered))
    assert app(b, ciphertext).plaintext == b"x" * 100


def test_replayed_ciphertext_is_rejected_also_after_restart(make: Factory) -> None:
    a, b, group = pair(make)
    first, second = a.encrypt(group, b"one"), a.encrypt(group, b"two")
    assert app(b, first).plaintext == b"one"
    with pytest.raises(UndecryptableError, match="refused by mls-rs"):
        b.process(first)
    b.close()
    b = make("b")
    with pytest.raises(UndecryptableError):
        b.process(first)
    assert app(b, second).plaintext == b"two"
    with pytest.raises(UndecryptableError):
        b.process(second)


def test_forged_sender_claim_is_rejected(make: Factory) -> None:
    a, b, c, group = trio(make)
    # b bypasses its engine to claim a's address inside the MLS-authenticated envelope.
    handle = b._groups[group].handle
    forged = handle.encrypt_application_message(b"\x01" + a.address.raw + b"hi")
    with pytest.raises(UndecryptableError, match="claims"):
        c.process(forged.to_bytes())


def test_standalone_proposals_are_refused(make: Factory) -> None:
    a, b, group = pair(make)
    c = make("c")
    kp = mls.Message.from_bytes(c.generate_key_package(now=NOW).data)
    proposal = b._groups[group].handle.propose_add_members([kp])[0].to_bytes()
    with pytest.raises(CryptoError, match="proposals"):
        a.process(proposal)
    assert a.epoch(group) == 1


def test_restart_restores_every_group(make: Factory) -> None:
    a, b, c, trio_group = trio(make)
    solo = a.create_group(b"solo")
    one_to_one = a.create_group(b"a-b")
    out = a.add_members(one_to_one, [b.generate_key_package(now=NOW).data], now=NOW)
    assert out.welcome is not None
    b.join_group(out.welcome, now=NOW)
    update = a.self_update(trio_group).commit
    commit(b, update)
    commit(c, update)
    update = b.self_update(trio_group).commit
    commit(a, update)
    commit(c, update)
    state = {g: (a.epoch(g), a.members(g), a.export_secret(g, b"k", b"", 16)) for g in a.groups()}
    a.close()
    a = make("a")
    assert set(a.groups()) == {trio_group, solo, one_to_one}
    for g, (epoch, members, secret) in state.items():
        assert (a.epoch(g), a.members(g), a.export_secret(g, b"k", b"", 16)) == (
            epoch,
            members,
            secret,
        )
    assert app(b, a.encrypt(one_to_one, b"after restart")).plaintext == b"after restart"
    assert app(a, c.encrypt(trio_group, b"to restarted a")).sender.node_key == c.node_key
    assert commit(b, a.self_update(trio_group).commit).epoch == a.epoch(trio_group)


def test_state_dir_of_another_node_is_refused(tmp_path: Path) -> None:
    MlsRsEngine(tmp_path, Identity.generate()).close()
    with pytest.raises(CryptoError, match="another node"):
        MlsRsEngine(tmp_path, Identity.generate())


def test_key_package_from_before_restart_is_refused_clearly(make: Factory) -> None:
    a, b = make("a"), make("b")
    group = a.create_group()
    kp = b.generate_key_package(now=NOW)
    b.close()
    b = make("b")
    out = a.add_members(group, [kp.data], now=NOW)
    assert out.welcome is not None
    with pytest.raises(CryptoError, match="before a restart"):
        b.join_group(out.welcome, now=NOW)


def test_key_package_lifetime_and_single_use(make: Factory) -> None:
    a, b = make("a"), make("b")
    kp = b.generate_key_package(now=NOW, lifetime_s=60)
    assert kp.expires_at == NOW + 60 and kp.mls_not_after > NOW
    assert kp.ref == wire.key_package_ref(kp.data)
    g1 = a.create_group()
    out = a.add_members(g1, [kp.data], now=NOW)
    assert out.welcome is not None
    with pytest.raises(CryptoError, match="expired"):
        b.join_group(out.welcome, now=NOW + 61)
    b.join_group(out.welcome, now=NOW + 59)
    g2 = a.create_group()
    again = a.add_members(g2, [kp.data], now=NOW)
    assert again.welcome is not None
    with pytest.raises(CryptoError, match="already used"):
        b.join_group(again.welcome, now=NOW)


def test_welcome_for_someone_else_is_not_found(make: Factory) -> None:
    a, b, c = make("a"), make("b"), make("c")
    out = a.add_members(a.create_group(), [b.generate_key_package(now=NOW).data], now=NOW)
    assert out.welcome is not None
    with pytest.raises(NotFound, match="key packages"):
        c.join_group(out.welcome, now=NOW)


def test_unendorsed_key_package_is_refused(make: Factory) -> None:
    a = make("a")
    keypair = mls.generate_signature_keypair(mls.CipherSuite.CURVE25519_AES128)
    stranger = mls.Client(b"not a meshd node", keypair, mls.client_config_default())
    kp = stranger.generate_key_package_message().to_bytes()
    with pytest.raises(InvalidArgument, match="endorsed") as info:
        a.add_members(a.create_group(), [kp], now=NOW)
    assert info.value.field == "key_package"


def test_expired_or_duplicate_key_packages_are_refused(make: Factory) -> None:
    a, b, group = pair(make)
    kp = make("c").generate_key_package(now=NOW)
    with pytest.raises(InvalidArgument, match="lifetime"):
        a.add_members(group, [kp.data], now=kp.mls_not_after + 1.0)
    with pytest.raises(AlreadyExists):
        a.add_members(group, [b.generate_key_package(now=NOW).data], now=NOW)


def test_bad_input_names_the_field(make: Factory) -> None:
    a, b, group = pair(make)
    with pytest.raises(NotFound) as nf:
        a.encrypt(b"nope", b"x")
    assert nf.value.field == "group_id"
    with pytest.raises(WireError) as we:
        a.process(b"\x00\x01\x00")
    assert we.value.field is not None
    with pytest.raises(InvalidArgument) as ia:
        a.export_secret(group, b"l", b"c", 0)
    assert ia.value.field == "length"
    with pytest.raises(InvalidArgument):
        a.process(b.generate_key_package(now=NOW).data)
    with pytest.raises(InvalidArgument):
        a.create_group(b"")
    with pytest.raises(InvalidArgument):
        a.join_group(b"\x00\x01\x00\x03garbage", now=NOW)
    with pytest.raises(NotFound):
        a.remove_members(group, [make("z").address])


def test_at_rest_key_hides_state_and_must_match(tmp_path: Path) -> None:
    identity = Identity.generate()
    key = bytes(range(32))
    engine = MlsRsEngine(tmp_path / "sealed", identity, at_rest_key=key)
    group = engine.create_group(b"visible-group-id")
    signature_key = engine.signature_key
    engine.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "sealed").iterdir())
    assert signature_key not in raw and identity.public.signing_key not in raw
    with pytest.raises(CryptoError, match="at-rest key"):
        MlsRsEngine(tmp_path / "sealed", identity, at_rest_key=bytes(32))
    reopened = MlsRsEngine(tmp_path / "sealed", identity, at_rest_key=key)
    assert reopened.groups() == (group,) and reopened.signature_key == signature_key
    reopened.close()
    plain = MlsRsEngine(tmp_path / "plain", identity)
    plain_raw = b"".join(p.read_bytes() for p in (tmp_path / "plain").iterdir())
    assert plain.signature_key in plain_raw  # the check above can fail
    plain.close()


def test_member_that_missed_commits_catches_up_in_order(make: Factory) -> None:
    a, b, c, group = trio(make)
    first, second = a.self_update(group).commit, a.self_update(group).commit
    commit(c, first)
    commit(c, second)
    message = c.encrypt(group, b"epoch 3")
    with pytest.raises(EpochAheadError) as ahead:
        b.process(message)
    assert (ahead.value.epoch, ahead.value.current) == (3, 1)
    with pytest.raises(EpochAheadError):
        b.process(second)
    assert commit(b, first).epoch == 2
    assert commit(b, second).epoch == 3
    assert app(b, message).plaintext == b"epoch 3"


def test_partition_fork_resolved_by_rollback(make: Factory) -> None:
    """Two admins commit at once on either side of a partition; the losing side rolls back
    to the fork epoch and follows the winning branch (which branch wins is the daemon's
    rule; the engine provides the rollback)."""
    a, b, c, group = trio(make)
    assert app(c, a.encrypt(group, b"before the split")).plaintext == b"before the split"
    winning = a.self_update(group).commit  # side {a, b}
    commit(b, winning)
    losing = c.self_update(group).commit  # side {c}: its own epoch 2
    stray = c.encrypt(group, b"on the losing branch")
    assert a.epoch(group) == c.epoch(group) == 2
    assert a.export_secret(group, b"x", b"", 16) != c.export_secret(group, b"x", b"", 16)
    with pytest.raises(UndecryptableError):
        a.process(losing)  # a commit for epoch 1 on a group at epoch 2
    c.rollback(group, 1)
    assert c.epoch(group) == 1
    assert commit(c, winning).epoch == 2
    assert len({e.export_secret(group, b"x", b"", 16) for e in (a, b, c)}) == 1
    assert app(c, b.encrypt(group, b"healed")).plaintext == b"healed"
    assert app(a, c.encrypt(group, b"back")).sender.node_key == c.node_key
    with pytest.raises(UndecryptableError):
        a.process(stray)  # sealed on the abandoned branch
    c.close()
    c = make("c")  # the rollback is persisted
    assert app(c, a.encrypt(group, b"after restart")).plaintext == b"after restart"
    with pytest.raises(NotFound, match="not retained"):
        c.rollback(group, 0)
    with pytest.raises(InvalidArgument):
        c.rollback(group, 2)


def test_late_message_from_previous_epoch_opens_once(make: Factory) -> None:
    a, b, c, group = trio(make)
    early, late = c.encrypt(group, b"early"), c.encrypt(group, b"late")
    assert app(a, early).plaintext == b"early"
    update = b.self_update(group).commit
    commit(a, update)
    commit(c, update)
    got = app(a, late)  # sealed at epoch 1, opened at epoch 2 from the retained epoch
    assert (got.plaintext, got.epoch, got.sender.node_key) == (b"late", 1, c.node_key)
    for replay in (early, late):
        with pytest.raises(UndecryptableError):
            a.process(replay)
    a.close()
    a = make("a")
    with pytest.raises(UndecryptableError):
        a.process(late)


@settings(max_examples=12, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["send", "update"]), st.integers(min_value=0, max_value=2)),
        max_size=6,
    )
)
def test_random_sends_and_updates_keep_members_in_agreement(ops: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        engines = [MlsRsEngine(Path(d) / str(i), Identity.generate()) for i in range(3)]
        a = engines[0]
        group = a.create_group()
        kps = [e.generate_key_package(now=NOW).data for e in engines[1:]]
        out = a.add_members(group, kps, now=NOW)
        assert out.welcome is not None
        for e in engines[1:]:
            e.join_group(out.welcome, now=NOW)
        for n, (op, who) in enumerate(ops):
            actor = engines[who]
            others = [e for e in engines if e is not actor]
            if op == "send":
                text = b"message %d" % n
                ciphertext = actor.encrypt(group, text)
                for e in others:
                    got = app(e, ciphertext)
                    assert (got.plaintext, got.sender.node_key) == (text, actor.node_key)
            else:
                update = actor.self_update(group).commit
                for e in others:
                    assert commit(e, update).epoch == actor.epoch(group)
        assert len({e.epoch(group) for e in engines}) == 1
        assert len({e.export_secret(group, b"agree", b"", 32) for e in engines}) == 1
        for e in engines:
            e.close()
