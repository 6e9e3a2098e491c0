"""Persistence of MLS state: signer, key packages, group states and retained epochs.

Two homes. Standalone (tests, benchmarks): one SQLite database (``mls.sqlite3``) in a
directory passed in (created 0700, file 0600), each write its own transaction. In a node:
tables prefixed ``mls_`` in the node's own database, on its connection, so the ratchet
state commits in the same transaction as the messages it sealed or opened (the node's
pump commits; see ``connection``). A crash then leaves both old or both new: no key is
burned for a message that was not stored, no stored ciphertext is ahead of its state.
mls-rs hands us its serialized group state through the GroupStateStorage callbacks after
every change; a multi-statement change is atomic either way (a transaction, or a
savepoint inside the node's). WAL with ``synchronous=NORMAL``: a committed write survives
a process crash; the last transactions before a power cut may be lost (measured: FULL
costs an fsync per application message).

When ``at_rest_key`` (32 bytes, from the node keystore) is given, every blob is sealed with
AES-256-GCM under a random nonce, with the row's table and key as associated data, so rows
cannot be swapped between groups or tables unnoticed.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshd.errors import CryptoError, InvalidArgument, StoreError

DB_NAME = "mls.sqlite3"
#: Retained past epochs per group (mls-rs asks for them to open late messages); older
#: records are pruned on write.
EPOCHS_KEPT = 8
_NONCE_LEN = 12
_CHECK = b"meshd-mls-state-v1"

_TABLES = ("meta", "groups", "history", "epochs", "key_packages")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS {p}meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {p}groups ("
    " group_id BLOB PRIMARY KEY, state BLOB NOT NULL, epoch INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {p}history ("
    " group_id BLOB NOT NULL, epoch INTEGER NOT NULL, state BLOB NOT NULL,"
    " PRIMARY KEY (group_id, epoch))",
    "CREATE TABLE IF NOT EXISTS {p}epochs ("
    " group_id BLOB NOT NULL, epoch_id INTEGER NOT NULL, data BLOB NOT NULL,"
    " PRIMARY KEY (group_id, epoch_id))",
    "CREATE TABLE IF NOT EXISTS {p}key_packages ("
    " ref BLOB PRIMARY KEY, data BLOB NOT NULL, created_at REAL NOT NULL,"
    " expires_at REAL NOT NULL, run INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0)",
)
SHARED_PREFIX = "mls_"  # table names in a node's database



@dataclass(frozen=True, slots=True)
class KeyPackageRecord:
    ref: bytes
    data: bytes
    created_at: float
    expires_at: float
    run: int  # engine run that generated it (its private keys died with that run)
    used: bool


class MlsStateStore:
    """The MLS state of one node: in ``directory`` (its own database), or on
    ``connection`` (the node's database: its open transaction, committed by the node)."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        at_rest_key: bytes | None = None,
        connection: sqlite3.Connection | None = None,
        legacy_dir: Path | None = None,
        on_write: Callable[[], None] | None = None,
    ) -> None:
        """``connection`` (with ``isolation_level=None``): writes join its transaction (one
        is begun if none is open) and are left for its owner to commit; ``on_write`` is
        told after each (the node schedules the pass that commits). ``legacy_dir``: a
        directory whose ``mls.sqlite3`` (from before the state moved) is imported once
        when this database has no MLS state yet (``imported`` says so; the caller commits,
        then calls :func:`retire_legacy`)."""
        if (directory is None) == (connection is None):
            raise InvalidArgument("either a directory or a connection", field="directory")
        if at_rest_key is not None and len(at_rest_key) != 32:
            raise InvalidArgument("the at-rest key is 32 bytes", field="at_rest_key")
        self._aead = AESGCM(at_rest_key) if at_rest_key is not None else None
        self._epoch_cache: dict[bytes, int] = {}  # stored epoch per group (sole writer)
        self._on_write = on_write
        self.shared = connection is not None
        self.imported = False
        p = SHARED_PREFIX if self.shared else ""
        self._meta_t, self._groups_t, self._history_t, self._epochs_t, self._kp_t = (
            p + t for t in _TABLES
        )
        try:
            if connection is not None:
                self._db = connection
                row = connection.execute("PRAGMA database_list").fetchone()
                self._path = Path(row[2])
                self._begin_shared()
                for sql in _SCHEMA:
                    connection.execute(sql.format(p=p))
                if legacy_dir is not None:
                    self.imported = self._import_legacy(legacy_dir / DB_NAME)
            else:
                assert directory is not None
                directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                path = directory / DB_NAME
                self._path = path
                if not path.exists():
                    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
                self._db = sqlite3.connect(path, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                for sql in _SCHEMA:
                    self._db.execute(sql.format(p=p))
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open MLS state: {exc}", field="state_dir") from exc
        self._check_key()

    def close(self) -> None:
        if not self.shared:  # a shared connection is its owner's to close
            self._db.close()

    # -- transactions -----------------------------------------------------------------

    def _begin_shared(self) -> None:
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")

    def _write(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        """One statement: autocommitted in its own database, else in the node's
        transaction."""
        if self.shared:
            self._begin_shared()
        cur = self._db.execute(sql, params)
        if self._on_write is not None:
            self._on_write()
        return cur

    def _atomic_begin(self) -> None:
        if self.shared:
            self._begin_shared()
            self._db.execute("SAVEPOINT mls_write")
        else:
            self._db.execute("BEGIN")

    def _atomic_commit(self) -> None:
        self._db.execute("RELEASE mls_write" if self.shared else "COMMIT")
        if self._on_write is not None:
            self._on_write()

    def _atomic_rollback(self) -> None:
        if self.shared:
            self._db.execute("ROLLBACK TO mls_write")
            self._db.execute("RELEASE mls_write")
        else:
            self._db.execute("ROLLBACK")

    def _import_legacy(self, path: Path) -> bool:
        """Copy the rows of a standalone MLS database into the shared tables (as they
        are: the sealing's associated data names no table), unless these hold any."""
        if not path.exists():
            return False
        if self._db.execute(f"SELECT 1 FROM {self._meta_t} LIMIT 1").fetchone() is not None:
            return False  # imported before (the old file outlived a crash): keep ours
        try:
            old = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the old MLS state {path}: {exc}") from exc
        try:
            for table in _TABLES:
                rows = old.execute(f"SELECT * FROM {table}").fetchall()
                if rows:
                    marks = ", ".join("?" * len(rows[0]))
                    self._db.executemany(
                        f"INSERT OR REPLACE INTO {SHARED_PREFIX}{table} VALUES ({marks})", rows
                    )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read the old MLS state {path}: {exc}") from exc
        finally:
            old.close()
        return True

    def sync_wal(self) -> None:
        """fsync the WAL: every write so far survives power loss (``synchronous=NORMAL``
        alone only survives a process crash). Thread-safe: os calls on its own fd."""
        path = f"{self._path}-wal"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # checkpointed and removed: already on disk
            return
        except OSError as exc:
            raise StoreError(f"cannot open {path}: {exc.strerror}", field="state_dir") from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise StoreError(f"fsync {path} failed: {exc.strerror}", field="state_dir") from exc
        finally:
            os.close(fd)

    # -- sealing ---------------------------------------------------------------------

    def _seal(self, aad: bytes, value: bytes) -> bytes:
        if self._aead is None:
            return value
        nonce = os.urandom(_NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, value, aad)

    def _open(self, aad: bytes, blob: bytes) -> bytes:
        if self._aead is None:
            return blob
        try:
            return self._aead.decrypt(blob[:_NONCE_LEN], blob[_NONCE_LEN:], aad)
        except InvalidTag as exc:
            raise StoreError("an MLS state row fails authentication", field="state_dir") from exc

    def _check_key(self) -> None:
        row = self._db.execute(f"SELECT value FROM {self._meta_t} WHERE name='check'").fetchone()
        if row is None:
            self._write(
                f"INSERT INTO {self._meta_t} VALUES ('check', ?)",
                (self._seal(b"meta:check", _CHECK),),
            )
            return
        try:
            ok = self._open(b"meta:check", row[0]) == _CHECK
        except StoreError:
            ok = False
        if not ok:
            raise CryptoError(
                "the at-rest key does not match the one this MLS state was written with",
                field="at_rest_key",
            )

    # -- meta: signer and run counter -------------------------------------------------

    def get_meta(self, name: str) -> bytes | None:
        row = self._db.execute(f"SELECT value FROM {self._meta_t} WHERE name=?", (name,)).fetchone()
        return None if row is None else self._open(b"meta:" + name.encode(), row[0])

    def set_meta(self, name: str, value: bytes) -> None:
        blob = self._seal(b"meta:" + name.encode(), value)
        self._write(f"INSERT OR REPLACE INTO {self._meta_t} VALUES (?, ?)", (name, blob))

    def next_run(self) -> int:
        """Count engine starts; key packages record the run that made them."""
        current = self.get_meta("run")
        run = (int.from_bytes(current, "big") if current else 0) + 1
        self.set_meta("run", run.to_bytes(8, "big"))
        return run

    # -- group state (mls-rs GroupStateStorage) ---------------------------------------

    def group_state(self, group_id: bytes) -> bytes | None:
        row = self._db.execute(
            f"SELECT state FROM {self._groups_t} WHERE group_id=?", (group_id,)
        ).fetchone()
        return None if row is None else self._open(b"group:" + group_id, row[0])

    def epoch_record(self, group_id: bytes, epoch_id: int) -> bytes | None:
        row = self._db.execute(
            f"SELECT data FROM {self._epochs_t} WHERE group_id=? AND epoch_id=?",
            (group_id, epoch_id),
        ).fetchone()
        return None if row is None else self._open(_epoch_aad(group_id, epoch_id), row[0])

    def max_epoch_id(self, group_id: bytes) -> int | None:
        row = self._db.execute(
            f"SELECT MAX(epoch_id) FROM {self._epochs_t} WHERE group_id=?", (group_id,)
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def write_group(
        self, group_id: bytes, state: bytes, epoch: int, epochs: Iterable[tuple[int, bytes]]
    ) -> None:
        """Store a group's state at ``epoch`` and new/updated epoch records, atomically.

        When the epoch moves on, the last state of the previous epoch is kept in
        ``history`` (bounded by EPOCHS_KEPT) so that :meth:`rollback_group` can return to
        it after a partition fork.
        """
        db = self._db
        records = list(epochs)
        stored_epoch = self._stored_epoch(group_id)
        sealed = self._seal(b"group:" + group_id, state)
        if not records and stored_epoch == epoch:
            # The common case (every message): one autocommitted statement.
            self._write(f"UPDATE {self._groups_t} SET state=? WHERE group_id=?", (sealed, group_id))
            return
        self._atomic_begin()
        try:
            previous = self.group_state(group_id) if stored_epoch != epoch else None
            if stored_epoch is not None and previous is not None:
                db.execute(
                    f"INSERT OR REPLACE INTO {self._history_t} VALUES (?, ?, ?)",
                    (
                        group_id,
                        stored_epoch,
                        self._seal(_history_aad(group_id, stored_epoch), previous),
                    ),
                )
                db.execute(
                    f"DELETE FROM {self._history_t} WHERE group_id=? AND epoch<?",
                    (group_id, stored_epoch - EPOCHS_KEPT + 1),
                )
            db.execute(
                f"INSERT OR REPLACE INTO {self._groups_t} VALUES (?, ?, ?)",
                (group_id, sealed, epoch),
            )
            top = -1
            for epoch_id, data in records:
                db.execute(
                    f"INSERT OR REPLACE INTO {self._epochs_t} VALUES (?, ?, ?)",
                    (group_id, epoch_id, self._seal(_epoch_aad(group_id, epoch_id), data)),
                )
                top = max(top, epoch_id)
            if top >= EPOCHS_KEPT:
                db.execute(
                    f"DELETE FROM {self._epochs_t} WHERE group_id=? AND epoch_id<=?",
                    (group_id, top - EPOCHS_KEPT),
                )
            self._atomic_commit()
        except BaseException:
            self._atomic_rollback()
            self._epoch_cache.pop(group_id, None)
            raise
        self._epoch_cache[group_id] = epoch

    def _stored_epoch(self, group_id: bytes) -> int | None:
        if group_id not in self._epoch_cache:
            row = self._db.execute(
                f"SELECT epoch FROM {self._groups_t} WHERE group_id=?", (group_id,)
            ).fetchone()
            if row is None:
                return None
            self._epoch_cache[group_id] = int(row[0])
        return self._epoch_cache[group_id]

    def history_epochs(self, group_id: bytes) -> list[int]:
        """Past epochs of the group whose last state is retained, oldest first."""
        rows = self._db.execute(
            f"SELECT epoch FROM {self._history_t} WHERE group_id=? ORDER BY epoch", (group_id,)
        )
        return [int(r[0]) for r in rows]

    def rollback_group(self, group_id: bytes, epoch: int) -> bool:
        """Make the retained last state of ``epoch`` current again and forget everything
        after it (later states and epoch records). False if that epoch is not retained."""
        db = self._db
        row = db.execute(
            f"SELECT state FROM {self._history_t} WHERE group_id=? AND epoch=?",
            (group_id, epoch),
        ).fetchone()
        if row is None:
            return False
        state = self._open(_history_aad(group_id, epoch), row[0])
        self._atomic_begin()
        try:
            db.execute(
                f"UPDATE {self._groups_t} SET state=?, epoch=? WHERE group_id=?",
                (self._seal(b"group:" + group_id, state), epoch, group_id),
            )
            db.execute(
                f"DELETE FROM {self._history_t} WHERE group_id=? AND epoch>=?", (group_id, epoch)
            )
            db.execute(
                f"DELETE FROM {self._epochs_t} WHERE group_id=? AND epoch_id>=?",
                (group_id, epoch),
            )
            self._atomic_commit()
        except BaseException:
            self._atomic_rollback()
            raise
        finally:
            self._epoch_cache.pop(group_id, None)
        return True

    def group_ids(self) -> list[bytes]:
        rows = self._db.execute(f"SELECT group_id FROM {self._groups_t} ORDER BY 1")
        return [bytes(r[0]) for r in rows]

    def delete_group(self, group_id: bytes) -> None:
        self._epoch_cache.pop(group_id, None)
        self._atomic_begin()
        try:
            for table in (self._groups_t, self._epochs_t, self._history_t):
                self._db.execute(f"DELETE FROM {table} WHERE group_id=?", (group_id,))
            self._atomic_commit()
        except BaseException:
            self._atomic_rollback()
            raise

    # -- key packages -----------------------------------------------------------------

    def save_key_package(self, record: KeyPackageRecord) -> None:
        self._write(
            f"INSERT OR REPLACE INTO {self._kp_t} VALUES (?, ?, ?, ?, ?, ?)",
            (
                record.ref,
                self._seal(b"kp:" + record.ref, record.data),
                record.created_at,
                record.expires_at,
                record.run,
                int(record.used),
            ),
        )

    def key_package(self, ref: bytes) -> KeyPackageRecord | None:
        row = self._db.execute(
            f"SELECT ref, data, created_at, expires_at, run, used FROM {self._kp_t} WHERE ref=?",
            (ref,),
        ).fetchone()
        if row is None:
            return None
        data = self._open(b"kp:" + ref, row[1])
        return KeyPackageRecord(bytes(row[0]), data, row[2], row[3], row[4], bool(row[5]))

    def mark_key_package_used(self, ref: bytes) -> None:
        self._write(f"UPDATE {self._kp_t} SET used=1 WHERE ref=?", (ref,))

    def prune_key_packages(self, *, now: float) -> int:
        """Forget expired key packages; returns how many."""
        cur = self._write(f"DELETE FROM {self._kp_t} WHERE expires_at<=?", (now,))
        return cur.rowcount


def _epoch_aad(group_id: bytes, epoch_id: int) -> bytes:
    return b"epoch:" + epoch_id.to_bytes(8, "big") + group_id


def _history_aad(group_id: bytes, epoch: int) -> bytes:
    return b"history:" + epoch.to_bytes(8, "big") + group_id


def retire_legacy(directory: Path) -> None:
    """Rename an imported standalone ``mls.sqlite3`` (and its WAL) out of the way, once
    the import is committed: kept, not deleted, but never read again."""
    for suffix in ("", "-wal", "-shm"):
        path = directory / (DB_NAME + suffix)
        if path.exists():
            path.rename(path.with_name(path.name + ".imported"))
