"""The keystore: identity sealed at rest, migration, wrong keys, tampering, key sources."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from meshd.crypto import keystore
from meshd.crypto.identity import Identity
from meshd.errors import StoreError
from meshd.store.statedir import ensure_state_dir, load_or_create_identity

NO_CRED: dict[str, str] = {}


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def _cred_env(tmp_path: Path, data: bytes) -> dict[str, str]:
    cred = tmp_path / "creds"
    cred.mkdir(exist_ok=True)
    (cred / keystore.CREDENTIAL_NAME).write_bytes(data)
    return {"CREDENTIALS_DIRECTORY": str(cred)}


def test_round_trip_sealed_and_modes(tmp_path: Path) -> None:
    state = ensure_state_dir(tmp_path / "state")
    first = keystore.load_or_create(state / "identity.key", environ=NO_CRED)
    assert first.created and not first.migrated and not first.key.from_credential
    again = keystore.load_or_create(state / "identity.key", environ=NO_CRED)
    assert not again.created
    assert again.identity.private_bytes() == first.identity.private_bytes()
    blob = (state / "identity.key").read_bytes()
    assert blob.startswith(keystore.SEALED_MAGIC)
    assert first.identity.private_bytes()[8:40] not in blob  # the signing seed is not in clear
    assert _mode(state) == 0o700
    assert _mode(state / "identity.key") == 0o600
    assert _mode(state / keystore.KEY_FILE) == 0o600
    assert len((state / keystore.KEY_FILE).read_bytes()) == 32
    assert not list(state.glob("*.tmp"))


def test_plain_identity_is_migrated_keeping_the_address(tmp_path: Path) -> None:
    state = ensure_state_dir(tmp_path / "state")
    old = Identity.generate()
    (state / "identity.key").write_bytes(old.private_bytes())
    os.chmod(state / "identity.key", 0o600)
    result = keystore.load_or_create(state / "identity.key", environ=NO_CRED)
    assert result.migrated and not result.created
    assert result.identity.address == old.address
    assert keystore.is_sealed((state / "identity.key").read_bytes())
    assert _mode(state / "identity.key") == 0o600
    reloaded = keystore.load_or_create(state / "identity.key", environ=NO_CRED)
    assert reloaded.identity.address == old.address and not reloaded.migrated


def test_wrong_key_refused_and_file_kept(tmp_path: Path) -> None:
    state = ensure_state_dir(tmp_path / "state")
    keystore.load_or_create(state / "identity.key", environ=NO_CRED)
    before = (state / "identity.key").read_bytes()
    (state / keystore.KEY_FILE).write_bytes(os.urandom(32))
    with pytest.raises(StoreError) as err:
        keystore.load_or_create(state / "identity.key", environ=NO_CRED)
    assert str(state / "identity.key") in str(err.value)
    assert "wrong keystore key" in str(err.value)
    assert (state / "identity.key").read_bytes() == before


@pytest.mark.parametrize("offset", [8, 15, 30, -1])
def test_tampered_file_refused_and_kept(tmp_path: Path, offset: int) -> None:
    state = ensure_state_dir(tmp_path / "state")
    keystore.load_or_create(state / "identity.key", environ=NO_CRED)
    blob = bytearray((state / "identity.key").read_bytes())
    blob[offset] ^= 0x01
    (state / "identity.key").write_bytes(bytes(blob))
    with pytest.raises(StoreError, match=r"identity\.key"):
        keystore.load_or_create(state / "identity.key", environ=NO_CRED)
    assert (state / "identity.key").read_bytes() == bytes(blob)


def test_truncated_and_garbage_refused(tmp_path: Path) -> None:
    state = ensure_state_dir(tmp_path / "state")
    keystore.load_or_create(state / "identity.key", environ=NO_CRED)
    (state / "identity.key").write_bytes(keystore.SEALED_MAGIC + b"\x00" * 10)
    with pytest.raises(StoreError, match="not a meshd keystore file"):
        keystore.load_or_create(state / "identity.key", environ=NO_CRED)
    (state / "identity.key").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="corrupted"):
        keystore.load_or_create(state / "identity.key", environ=NO_CRED)
    assert (state / "identity.key").read_bytes() == b"garbage"


def test_sealed_identity_without_any_key_is_refused(tmp_path: Path) -> None:
    state = ensure_state_dir(tmp_path / "state")
    keystore.load_or_create(state / "identity.key", environ=NO_CRED)
    (state / keystore.KEY_FILE).unlink()
    with pytest.raises(StoreError, match="no keystore key"):
        keystore.load_or_create(state / "identity.key", environ=NO_CRED)
    assert not (state / keystore.KEY_FILE).exists()  # no new key was invented


def test_credential_preferred_over_key_file(tmp_path: Path) -> None:
    state = ensure_state_dir(tmp_path / "state")
    key = os.urandom(32)
    env = _cred_env(tmp_path, key.hex().encode() + b"\n")  # hex form, trailing newline
    first = keystore.load_or_create(state / "identity.key", environ=env)
    assert first.key.from_credential and first.key.key == key
    assert not (state / keystore.KEY_FILE).exists()  # no key file beside the identity
    (state / keystore.KEY_FILE).write_bytes(os.urandom(32))  # a decoy: must be ignored
    again = keystore.load_or_create(state / "identity.key", environ=env)
    assert again.identity.address == first.identity.address
    # The identity really is sealed under the credential: the raw form opens it too.
    raw_env = _cred_env(tmp_path, key)
    assert keystore.load_or_create(state / "identity.key", environ=raw_env).identity.address \
        == first.identity.address
    with pytest.raises(StoreError):  # and the decoy key file alone does not
        keystore.load_or_create(state / "identity.key", environ=NO_CRED)


def test_bad_credential_names_the_file(tmp_path: Path) -> None:
    state = ensure_state_dir(tmp_path / "state")
    env = _cred_env(tmp_path, b"too short")
    with pytest.raises(StoreError) as err:
        keystore.load_or_create(state / "identity.key", environ=env)
    assert keystore.CREDENTIAL_NAME in str(err.value)
    assert not (state / "identity.key").exists()


def test_seal_binds_the_label() -> None:
    key = os.urandom(32)
    blob = keystore.seal(key, b"secret", label=b"identity")
    assert keystore.unseal(key, blob, label=b"identity", what="x") == b"secret"
    with pytest.raises(StoreError):
        keystore.unseal(key, blob, label=b"mls-state", what="x")


def test_statedir_logs_one_warning_for_the_key_file(tmp_path: Path) -> None:
    state = ensure_state_dir(tmp_path / "state")
    with structlog.testing.capture_logs() as logs:
        _ident, created = load_or_create_identity(state, environ=NO_CRED)
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert created and len(warnings) == 1
    assert "only as safe as this file" in warnings[0]["detail"]
    env = _cred_env(tmp_path, os.urandom(32))
    other = ensure_state_dir(tmp_path / "other")
    with structlog.testing.capture_logs() as logs:
        load_or_create_identity(other, environ=env)
    assert not [e for e in logs if e["log_level"] == "warning"]


def test_daemon_exits_1_with_one_line_on_a_wrong_key(tmp_path: Path) -> None:
    state = ensure_state_dir(tmp_path / "state")
    keystore.load_or_create(state / "identity.key", environ=NO_CRED)
    before = (state / "identity.key").read_bytes()
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "MESHD_SOCKET")}
    (state / keystore.KEY_FILE).write_bytes(os.urandom(32))  # not the key that sealed it
    proc = subprocess.run(
        [sys.executable, "-m", "meshd", "--state-dir", str(state),
         "--socket", str(tmp_path / "api.sock"), "--listen", "127.0.0.1:0", "--no-discovery"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("meshd: cannot decrypt identity"), lines
    assert str(state / "identity.key") in lines[0]
    assert (state / "identity.key").read_bytes() == before


def test_moving_to_a_credential_reseals_once(tmp_path: Path) -> None:
    state = ensure_state_dir(tmp_path / "state")
    first = keystore.load_or_create(state / "identity.key", environ=NO_CRED)
    env = _cred_env(tmp_path, os.urandom(32))
    moved = keystore.load_or_create(state / "identity.key", environ=env)
    assert moved.resealed and moved.identity.address == first.identity.address
    again = keystore.load_or_create(state / "identity.key", environ=env)
    assert not again.resealed and again.identity.address == first.identity.address
    with pytest.raises(StoreError):  # keystore.key no longer opens it
        keystore.load_or_create(state / "identity.key", environ=NO_CRED)
