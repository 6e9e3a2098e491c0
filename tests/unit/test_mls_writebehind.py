"""Write-behind in MlsRsEngine: application messages persist on flush(), and that is safe.

A "crash" here drops the engine without flush or close (its SQLite connection is closed
directly, as the process dying would), then reopens the same state directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshd.crypto.identity import Identity
from meshd.crypto.mls.engine import ApplicationMessage, EpochChanged, MlsEngine
from meshd.crypto.mls.mlsrs import MlsRsEngine
from meshd.errors import UndecryptableError

NOW = 1_800_000_000.0

Factory = Callable[..., MlsRsEngine]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Factory]:
    identities: dict[str, Identity] = {}
    opened: list[MlsRsEngine] = []

    def factory(name: str, *, write_behind: bool = True) -> MlsRsEngine:
        identity = identities.setdefault(name, Identity.generate())
        engine = MlsRsEngine(tmp_path / name, identity, write_behind=write_behind)
        opened.append(engine)
        return engine

    yield factory
    for engine in opened:
        with contextlib.suppress(Exception):  # a crashed engine's store is closed
            engine.close()


def crash(engine: MlsRsEngine) -> None:
    """Lose the process: nothing un-flushed reaches the disk."""
    engine._store.close()


def pair(make: Factory) -> tuple[MlsRsEngine, MlsRsEngine, bytes]:
    a, b = make("a"), make("b")
    group = a.create_group()
    out = a.add_members(group, [b.generate_key_package(now=NOW).data], now=NOW)
    assert out.welcome is not None
    b.join_group(out.welcome, now=NOW)
    return a, b, group


def opened(engine: MlsEngine, message: bytes) -> bytes:
    result = engine.process(message)
    assert isinstance(result, ApplicationMessage)
    return result.plaintext


def test_flush_persists_both_ratchets(make: Factory) -> None:
    a, b, group = pair(make)
    sent = [a.encrypt(group, b"m%d" % i) for i in range(3)]
    assert [opened(b, c) for c in sent] == [b"m0", b"m1", b"m2"]
    assert a.flush() and b.flush()  # something was written...
    assert not a.flush() and not b.flush()  # ...once
    crash(a)
    crash(b)
    a2, b2 = make("a"), make("b")
    # b's opened keys stay burned across the restart: a replay is refused...
    with pytest.raises(UndecryptableError):
        b2.process(sent[1])
    # ...and a's next seal uses a new generation, which b opens.
    assert opened(b2, a2.encrypt(group, b"after")) == b"after"


def test_crash_before_flush_loses_only_unreleased_state_and_resealing_is_safe(
    make: Factory,
) -> None:
    a, b, group = pair(make)
    opened(b, a.encrypt(group, b"flushed"))
    a.flush()
    b.flush()
    # Sealed but never flushed: the node would not have committed, so never released.
    lost = a.encrypt(group, b"never left")
    crash(a)
    a2 = make("a")
    again = a2.encrypt(group, b"resealed")
    assert opened(b, again) == b"resealed"
    # The re-seal reused the lost ciphertext's generation: b, having opened the re-seal,
    # no longer holds that key. This is why the lost ciphertext must never have left
    # (flush before the node's commit; frames only after it).
    with pytest.raises(UndecryptableError):
        b.process(lost)
    assert lost != again  # fresh reuse_guard / nonce, second line of defence


def test_receiver_crash_before_flush_opens_the_retransmission_again(make: Factory) -> None:
    a, b, group = pair(make)
    message = a.encrypt(group, b"retransmitted")
    a.flush()
    assert opened(b, message) == b"retransmitted"
    crash(b)  # not flushed: the node had not committed or acknowledged it either
    b2 = make("b")
    assert opened(b2, message) == b"retransmitted"


def test_flush_before_the_commit_writes_only_groups_that_sealed(make: Factory) -> None:
    a, b, group = pair(make)
    message = a.encrypt(group, b"opened, not yet committed")
    assert a.flush(opened_only=False)  # a sealed: written before the node's commit
    assert opened(b, message) == b"opened, not yet committed"
    assert not b.flush(opened_only=False)  # b only opened: not before the commit...
    crash(b)  # ...so killed there, b opens the retransmission again
    b2 = make("b")
    assert opened(b2, message) == b"opened, not yet committed"
    assert b2.flush() and not b2.flush()  # after the commit: written, once


def test_tampered_copy_in_a_dirty_group_does_not_burn_the_genuine_message(
    make: Factory,
) -> None:
    a, b, group = pair(make)
    earlier = [a.encrypt(group, b"e%d" % i) for i in range(3)]
    for c in earlier:
        opened(b, c)
    genuine = a.encrypt(group, b"genuine")
    tampered = bytearray(genuine)
    tampered[-5] ^= 0x01
    with pytest.raises(UndecryptableError):
        b.process(bytes(tampered))
    assert opened(b, genuine) == b"genuine"
    # The rebuilt state still refuses replays of what was opened before the reload.
    for c in earlier:
        with pytest.raises(UndecryptableError):
            b.process(c)
    # And a, whose own log was never replayed, keeps sealing new generations.
    assert opened(b, a.encrypt(group, b"next")) == b"next"


def test_refused_message_in_a_group_with_unflushed_seals_keeps_the_sending_ratchet(
    make: Factory,
) -> None:
    a, b, group = pair(make)
    out_a = [a.encrypt(group, b"a%d" % i) for i in range(2)]  # a: dirty with seals
    from_b = b.encrypt(group, b"from b")
    bad = bytearray(from_b)
    bad[-3] ^= 0x40
    with pytest.raises(UndecryptableError):
        a.process(bytes(bad))  # a reloads and replays its two seals
    assert opened(a, from_b) == b"from b"
    following = a.encrypt(group, b"a2")
    assert [opened(b, c) for c in [*out_a, following]] == [b"a0", b"a1", b"a2"]


def test_commit_persists_pending_seals_so_rollback_never_reuses_a_generation(
    make: Factory,
) -> None:
    a, b, group = pair(make)
    sealed = a.encrypt(group, b"epoch 1")  # un-flushed seal in epoch 1
    update = b.self_update(group)
    changed = a.process(update.commit)
    assert isinstance(changed, EpochChanged) and changed.epoch == 2
    a.rollback(group, 1)
    b.rollback(group, 1)
    assert opened(b, sealed) == b"epoch 1"
    # Back in epoch 1, a's next seal must not reuse the generation of ``sealed``: b has
    # consumed that key, so a reuse would show as a refusal here.
    assert opened(b, a.encrypt(group, b"after rollback")) == b"after rollback"


def test_a_caller_that_never_flushes_is_bounded(make: Factory) -> None:
    a, b, group = pair(make)
    for i in range(300):
        opened(b, a.encrypt(group, b"%d" % i))
    assert len(a._groups[group].unflushed) < 256
    crash(a)
    crash(b)
    a2, b2 = make("a"), make("b")
    # At most the un-flushed tail is re-sealed; b2 restarted too, so it opens it.
    assert opened(b2, a2.encrypt(group, b"tail")) == b"tail"


def test_turning_write_behind_off_flushes_and_writes_through(make: Factory) -> None:
    a, b, group = pair(make)
    c1 = a.encrypt(group, b"one")
    a.write_behind = False
    assert not a._groups[group].unflushed
    c2 = a.encrypt(group, b"two")
    crash(a)
    a2 = make("a", write_behind=False)
    assert [opened(b, c) for c in (c1, c2)] == [b"one", b"two"]
    assert opened(b, a2.encrypt(group, b"three")) == b"three"


def test_close_flushes(make: Factory) -> None:
    a, b, group = pair(make)
    message = a.encrypt(group, b"x")
    opened(b, message)
    b.close()
    b2 = make("b")
    with pytest.raises(UndecryptableError):
        b2.process(message)
