"""The state directory: created 0700, locked by one daemon, holding the identity (sealed)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from meshd.crypto import keystore
from meshd.crypto.identity import Identity
from meshd.errors import FailedPrecondition, StoreError

IDENTITY_FILE = "identity.key"
DATABASE_FILE = "meshd.db"
LOCK_FILE = "meshd.lock"


def ensure_state_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if missing; refuse a path that is not a directory."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create state directory {path}: {exc.strerror}") from exc
    if not path.is_dir():
        raise StoreError(f"state directory {path} is not a directory")
    return path


class StateLock:
    """An exclusive flock on the state dir: two daemons never share one store."""

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise FailedPrecondition(
                f"another meshd is running with state directory {self._path.parent}"
            ) from exc
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def load_or_create_identity(
    state_dir: Path, *, environ: Mapping[str, str] | None = None, log: Any = None
) -> tuple[Identity, bool]:
    """Read ``identity.key`` (encrypted at rest, see ``meshd.crypto.keystore``; a plain
    one is migrated) or generate one on first start; (identity, created)."""
    identity, created, _ = load_or_create_identity_key(state_dir, environ=environ, log=log)
    return identity, created


def load_or_create_identity_key(
    state_dir: Path, *, environ: Mapping[str, str] | None = None, log: Any = None
) -> tuple[Identity, bool, bytes]:
    """As ``load_or_create_identity``, plus the 32-byte keystore key (other at-rest
    secrets, e.g. the MLS state, derive their keys from it)."""
    log = log or structlog.get_logger("meshd.keystore")
    result = keystore.load_or_create(state_dir / IDENTITY_FILE, environ=environ)
    if not result.key.from_credential:
        log.warning(
            "keystore_key_file",
            key_file=result.key.source,
            detail="no systemd credential meshd-keystore-key: the private keys are only "
            "as safe as this file",
        )
    if result.resealed:
        log.warning(
            "identity_resealed",
            path=str(state_dir / IDENTITY_FILE),
            key=result.key.source,
            detail=f"now sealed under the credential: {keystore.KEY_FILE} can be deleted",
        )
    if result.migrated:
        log.info("identity_encrypted", path=str(state_dir / IDENTITY_FILE),
                 address=result.identity.address.text)  # fmt: skip
    return result.identity, result.created, result.key.key
