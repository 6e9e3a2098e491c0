"""The MLS state store: transactions, epoch pruning, sealing at rest, permissions."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from meshd.crypto.identity import Identity
from meshd.crypto.mls.credential import MlsSigner, endorse, parse_identity
from meshd.crypto.mls.storage import DB_NAME, EPOCHS_KEPT, KeyPackageRecord, MlsStateStore
from meshd.errors import CryptoError, InvalidArgument, StoreError

KEY = bytes(range(32))


def test_group_state_and_epochs_round_trip(tmp_path: Path) -> None:
    store = MlsStateStore(tmp_path, at_rest_key=KEY)
    store.write_group(b"g", b"state-1", 1, [(0, b"epoch-0")])
    store.write_group(b"g", b"state-2", 2, [(1, b"epoch-1"), (0, b"epoch-0-updated")])
    assert store.group_state(b"g") == b"state-2"
    assert store.epoch_record(b"g", 0) == b"epoch-0-updated"
    assert store.max_epoch_id(b"g") == 1
    assert store.group_state(b"other") is None and store.max_epoch_id(b"other") is None
    store.close()
    reopened = MlsStateStore(tmp_path, at_rest_key=KEY)
    assert reopened.group_ids() == [b"g"] and reopened.epoch_record(b"g", 1) == b"epoch-1"
    reopened.delete_group(b"g")
    assert reopened.group_ids() == [] and reopened.epoch_record(b"g", 1) is None
    reopened.close()


def test_old_epochs_are_pruned(tmp_path: Path) -> None:
    store = MlsStateStore(tmp_path)
    for epoch in range(3 * EPOCHS_KEPT):
        store.write_group(b"g", b"s", epoch + 1, [(epoch, b"e%d" % epoch)])
    top = 3 * EPOCHS_KEPT - 1
    assert store.epoch_record(b"g", top) == b"e%d" % top
    assert store.epoch_record(b"g", top - EPOCHS_KEPT + 1) is not None
    assert store.epoch_record(b"g", top - EPOCHS_KEPT) is None
    store.close()


def test_rows_are_sealed_and_bound_to_their_place(tmp_path: Path) -> None:
    store = MlsStateStore(tmp_path, at_rest_key=KEY)
    store.write_group(b"g1", b"secret-state-one", 0, [])
    store.write_group(b"g2", b"secret-state-two", 0, [])
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"secret-state" not in raw
    plain = MlsStateStore(tmp_path / "plain")
    plain.write_group(b"g1", b"secret-state-one", 0, [])
    plain.close()
    assert b"secret-state" in b"".join(p.read_bytes() for p in (tmp_path / "plain").iterdir())
    # Swap the two sealed rows: each names its group in the AEAD data, so both fail.
    db = sqlite3.connect(tmp_path / DB_NAME)
    rows = dict(db.execute("SELECT group_id, state FROM groups").fetchall())
    db.execute("UPDATE groups SET state=? WHERE group_id=?", (rows[b"g2"], b"g1"))
    db.commit()
    db.close()
    store = MlsStateStore(tmp_path, at_rest_key=KEY)
    with pytest.raises(StoreError):
        store.group_state(b"g1")
    assert store.group_state(b"g2") == b"secret-state-two"
    store.close()


def test_wrong_or_missing_at_rest_key_is_refused(tmp_path: Path) -> None:
    MlsStateStore(tmp_path, at_rest_key=KEY).close()
    with pytest.raises(CryptoError, match="at-rest key"):
        MlsStateStore(tmp_path, at_rest_key=bytes(32))
    with pytest.raises(CryptoError, match="at-rest key"):
        MlsStateStore(tmp_path)
    with pytest.raises(InvalidArgument) as exc:
        MlsStateStore(tmp_path, at_rest_key=b"short")
    assert exc.value.field == "at_rest_key"


def test_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "mls"
    MlsStateStore(directory).close()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / DB_NAME).stat().st_mode) == 0o600


def test_key_packages_runs_and_expiry(tmp_path: Path) -> None:
    store = MlsStateStore(tmp_path)
    assert store.next_run() == 1 and store.next_run() == 2
    store.save_key_package(KeyPackageRecord(b"r1", b"kp1", 10.0, 20.0, 2, False))
    store.save_key_package(KeyPackageRecord(b"r2", b"kp2", 10.0, 40.0, 2, False))
    store.mark_key_package_used(b"r2")
    record = store.key_package(b"r2")
    assert record is not None and record.used and record.data == b"kp2"
    assert store.prune_key_packages(now=30.0) == 1
    assert store.key_package(b"r1") is None
    store.close()


def test_signer_binding_verifies_and_detects_tampering() -> None:
    node = Identity.generate()
    signer = MlsSigner.generate(node)
    assert signer.node_key == node.public.signing_key
    assert parse_identity(signer.identity, signer.public_key) == node.public.signing_key
    assert MlsSigner.from_bytes(signer.to_bytes()) == signer
    other = MlsSigner.generate(node)
    assert parse_identity(signer.identity, other.public_key) is None  # endorses another key
    forged = bytearray(signer.identity)
    forged[-1] ^= 1
    assert parse_identity(bytes(forged), signer.public_key) is None
    with pytest.raises(InvalidArgument):
        MlsSigner.from_bytes(signer.secret_key + endorse(Identity.generate(), other.public_key))


def test_history_keeps_the_last_state_of_each_epoch_and_rolls_back(tmp_path: Path) -> None:
    store = MlsStateStore(tmp_path, at_rest_key=KEY)
    store.write_group(b"g", b"e0-first", 0, [])
    store.write_group(b"g", b"e0-last", 0, [])
    store.write_group(b"g", b"e1", 1, [(0, b"rec0")])
    store.write_group(b"g", b"e2", 2, [(1, b"rec1")])
    assert store.history_epochs(b"g") == [0, 1]
    assert store.rollback_group(b"g", 0)
    assert store.group_state(b"g") == b"e0-last"
    assert store.history_epochs(b"g") == [] and store.max_epoch_id(b"g") is None
    assert not store.rollback_group(b"g", 1)
    store.write_group(b"g", b"e1-other-branch", 1, [(0, b"rec0")])
    assert store.group_state(b"g") == b"e1-other-branch" and store.history_epochs(b"g") == [0]
    for epoch in range(2, 3 * EPOCHS_KEPT):
        store.write_group(b"g", b"s%d" % epoch, epoch, [])
    assert len(store.history_epochs(b"g")) == EPOCHS_KEPT
    store.close()


def test_sync_wal_fsyncs_the_wal_or_finds_nothing_to_do(tmp_path: Path) -> None:
    store = MlsStateStore(tmp_path / "s")
    store.set_meta("x", b"1")
    assert (tmp_path / "s" / "mls.sqlite3-wal").exists()
    store.sync_wal()  # the WAL exists: fsync'd
    store.close()  # last connection: SQLite checkpoints and removes the WAL
    store.sync_wal()  # nothing left to sync: no error
