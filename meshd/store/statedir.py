"""The state directory: created 0700, locked by one daemon, holding the identity (0600)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from meshd.crypto.identity import Identity
from meshd.errors import FailedPrecondition, MeshdError, StoreError

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


def load_or_create_identity(state_dir: Path) -> tuple[Identity, bool]:
    """Read ``identity.key`` or generate one on first start; (identity, created)."""
    path = state_dir / IDENTITY_FILE
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        identity = Identity.generate()
        _write_new(path, identity.private_bytes())
        return identity, True
    except OSError as exc:
        raise StoreError(f"cannot read identity {path}: {exc.strerror}") from exc
    try:
        return Identity.from_private_bytes(blob), False
    except MeshdError as exc:
        raise StoreError(
            f"identity file {path} is corrupted ({exc}); it was left untouched"
        ) from exc


def _write_new(path: Path, data: bytes) -> None:
    """Write 0600 via a temp file + fsync + rename, so a crash never leaves half a key."""
    tmp = path.with_suffix(".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, 0o600)
        os.rename(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StoreError(f"cannot write identity {path}: {exc.strerror}") from exc
