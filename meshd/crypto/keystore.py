"""The keystore: the node identity encrypted at rest with AES-256-GCM.

The key comes from the service manager when it can give one (systemd credential
``$CREDENTIALS_DIRECTORY/meshd-keystore-key``: 32 raw bytes or 64 hex characters), else
from ``keystore.key`` (0600) in the state directory, generated on first start. The latter
only protects against copies of ``identity.key`` alone (backups, a stray ``cp``): whoever
can read the state directory can read both, and the daemon says so in the log.

File format of an encrypted ``identity.key`` (see docs/identity.md)::

    "MESHKS1\\0" (8) | nonce (12) | AES-256-GCM(identity blob, aad = magic + label) (72 + 16)

The label (the file's role, e.g. ``b"identity"``) is authenticated, so a sealed blob of
one kind cannot be swapped in for another. A plain identity (``MESHID1\\0`` + 64 bytes,
written by meshd before the keystore existed) is migrated transparently on first start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshd.crypto.identity import Identity
from meshd.errors import MeshdError, StoreError

KEY_LEN = 32
NONCE_LEN = 12
TAG_LEN = 16
SEALED_MAGIC = b"MESHKS1\x00"
PLAIN_MAGIC = b"MESHID1\x00"
CREDENTIAL_NAME = "meshd-keystore-key"
KEY_FILE = "keystore.key"
IDENTITY_LABEL = b"identity"


@dataclass(frozen=True, slots=True)
class KeystoreKey:
    """The 32-byte key and where it came from (named in every error and log line)."""

    key: bytes
    source: str  # path of the credential or key file
    from_credential: bool


@dataclass(frozen=True, slots=True)
class LoadResult:
    identity: Identity
    created: bool  # no identity existed: a new one was generated
    migrated: bool  # a plain identity file was encrypted in place
    key: KeystoreKey
    resealed: bool = False  # was sealed under keystore.key, now under the credential


def parse_key(data: bytes, source: str) -> bytes:
    """32 raw bytes, or 64 hex characters (surrounding whitespace ignored)."""
    if len(data) == KEY_LEN:
        return data
    text = data.strip()
    if len(text) == 2 * KEY_LEN:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    raise StoreError(
        f"keystore key {source} must be 32 raw bytes or 64 hex characters "
        f"(it has {len(data)} bytes)",
        field="keystore_key",
    )


def seal(key: bytes, plaintext: bytes, *, label: bytes) -> bytes:
    """Encrypt ``plaintext`` under ``key``; ``label`` is bound as associated data."""
    nonce = os.urandom(NONCE_LEN)  # random 96-bit nonce: a handful of writes per key
    return SEALED_MAGIC + nonce + AESGCM(key).encrypt(nonce, plaintext, SEALED_MAGIC + label)


def unseal(key: bytes, blob: bytes, *, label: bytes, what: str) -> bytes:
    """Decrypt a ``seal`` output; StoreError naming ``what`` on a wrong key or tampering."""
    if not blob.startswith(SEALED_MAGIC) or len(blob) < len(SEALED_MAGIC) + NONCE_LEN + TAG_LEN:
        raise StoreError(f"{what} is not a meshd keystore file")
    nonce = blob[len(SEALED_MAGIC) : len(SEALED_MAGIC) + NONCE_LEN]
    body = blob[len(SEALED_MAGIC) + NONCE_LEN :]
    try:
        return AESGCM(key).decrypt(nonce, body, SEALED_MAGIC + label)
    except InvalidTag:
        raise StoreError(
            f"cannot decrypt {what}: wrong keystore key or the file was modified; "
            "it was left untouched"
        ) from None


def is_sealed(blob: bytes) -> bool:
    return blob.startswith(SEALED_MAGIC)


def load_key(
    state_dir: Path, *, environ: Mapping[str, str] | None = None, create: bool
) -> KeystoreKey | None:
    """The systemd credential when present, else ``keystore.key`` (generated when
    ``create``); None when neither exists and ``create`` is False."""
    env = os.environ if environ is None else environ
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        cred = Path(cred_dir) / CREDENTIAL_NAME
        try:
            data = cred.read_bytes()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot read keystore credential {cred}: {exc.strerror}") from exc
        else:
            return KeystoreKey(parse_key(data, str(cred)), str(cred), True)
    path = state_dir / KEY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if not create:
            return None
        key = os.urandom(KEY_LEN)
        write_private(path, key, what="keystore key")
        return KeystoreKey(key, str(path), False)
    except OSError as exc:
        raise StoreError(f"cannot read keystore key {path}: {exc.strerror}") from exc
    return KeystoreKey(parse_key(data, str(path)), str(path), False)


def load_or_create(
    path: Path, *, environ: Mapping[str, str] | None = None
) -> LoadResult:
    """Read (decrypting) the identity at ``path``, migrating a plain one, or create one.

    Never overwrites an existing identity except to replace a plain one by its sealed
    form (write to a temp file, fsync, rename: a crash leaves one or the other).
    """
    state_dir = path.parent
    try:
        blob: bytes | None = path.read_bytes()
    except FileNotFoundError:
        blob = None
    except OSError as exc:
        raise StoreError(f"cannot read identity {path}: {exc.strerror}") from exc

    if blob is not None and is_sealed(blob):
        key = load_key(state_dir, environ=environ, create=False)
        if key is None:
            raise StoreError(
                f"identity {path} is encrypted but there is no keystore key: neither the "
                f"credential {CREDENTIAL_NAME} ($CREDENTIALS_DIRECTORY) nor "
                f"{state_dir / KEY_FILE}; it was left untouched"
            )
        what = f"identity {path} (key from {key.source})"
        try:
            plain = unseal(key.key, blob, label=IDENTITY_LABEL, what=what)
        except StoreError:
            # The operator may have just moved to a systemd credential: a file sealed
            # under the old keystore.key is resealed under the credential, once.
            old = _key_file_opens(state_dir, blob) if key.from_credential else None
            if old is None:
                raise
            identity = _identity(old, path)
            write_private(path, seal(key.key, old, label=IDENTITY_LABEL), what="identity")
            return LoadResult(identity, created=False, migrated=False, key=key, resealed=True)
        return LoadResult(_identity(plain, path), created=False, migrated=False, key=key)

    if blob is not None:  # plain (pre-keystore) file: decode first, then seal in place
        identity = _identity(blob, path)
        key = load_key(state_dir, environ=environ, create=True)
        assert key is not None
        write_private(path, seal(key.key, blob, label=IDENTITY_LABEL), what="identity")
        return LoadResult(identity, created=False, migrated=True, key=key)

    key = load_key(state_dir, environ=environ, create=True)
    assert key is not None
    identity = Identity.generate()
    sealed = seal(key.key, identity.private_bytes(), label=IDENTITY_LABEL)
    write_private(path, sealed, what="identity")
    return LoadResult(identity, created=True, migrated=False, key=key)


def _key_file_opens(state_dir: Path, blob: bytes) -> bytes | None:
    """The plaintext if ``keystore.key`` (not the credential) opens ``blob``, else None."""
    try:
        key = parse_key((state_dir / KEY_FILE).read_bytes(), str(state_dir / KEY_FILE))
        return unseal(key, blob, label=IDENTITY_LABEL, what="identity")
    except (OSError, StoreError):
        return None


def _identity(plain: bytes, path: Path) -> Identity:
    try:
        return Identity.from_private_bytes(plain)
    except MeshdError as exc:
        raise StoreError(
            f"identity file {path} is corrupted ({exc}); it was left untouched"
        ) from exc


def write_private(path: Path, data: bytes, *, what: str) -> None:
    """Write 0600 via a temp file + fsync + rename, so a crash never leaves half a key."""
    tmp = path.with_name(path.name + ".tmp")
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
        raise StoreError(f"cannot write {what} {path}: {exc.strerror}") from exc
