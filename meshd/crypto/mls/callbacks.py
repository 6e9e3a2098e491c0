"""mls-rs ``GroupStateStorage`` callbacks over :class:`MlsStateStore`, and reading the
epoch out of the serialized state mls-rs hands them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from meshd.crypto.mls import wire
from meshd.crypto.mls._binding import mls
from meshd.crypto.mls.engine import CIPHER_SUITE
from meshd.crypto.mls.storage import MlsStateStore
from meshd.crypto.mls.tls import OPAQUE, Reader
from meshd.errors import CryptoError, MeshdError, StoreError, WireError

__all__ = ["StateCallbacks", "snapshot_epoch"]

_T = TypeVar("_T")
_SNAPSHOT_HEADER = 2  # mls-rs snapshot version (u16) before the GroupContext


class StateCallbacks(mls.GroupStateStorage):  # type: ignore[misc]
    """mls-rs GroupStateStorage callbacks, writing through to :class:`MlsStateStore`."""

    def __init__(self, store: MlsStateStore) -> None:
        self.store = store
        self.last_write: tuple[bytes, int] | None = None
        self.failure: BaseException | None = None

    def state(self, group_id: bytes) -> bytes | None:
        return self._guard(lambda: self.store.group_state(group_id))

    def epoch(self, group_id: bytes, epoch_id: int) -> bytes | None:
        return self._guard(lambda: self.store.epoch_record(group_id, epoch_id))

    def max_epoch_id(self, group_id: bytes) -> int | None:
        return self._guard(lambda: self.store.max_epoch_id(group_id))

    def write(
        self, group_id: bytes, group_state: bytes, epoch_inserts: Any, epoch_updates: Any
    ) -> None:
        def run() -> None:
            epoch = snapshot_epoch(group_state, group_id)
            records = [(e.id, e.data) for e in [*epoch_inserts, *epoch_updates]]
            self.store.write_group(group_id, group_state, epoch, records)
            self.last_write = (group_id, epoch)

        self._guard(run)

    def _guard(self, fn: Callable[[], _T]) -> _T:
        # An exception escaping a callback reaches mls-rs as an opaque string; keep the
        # original so the engine can re-raise it with its type.
        try:
            return fn()
        except MeshdError as exc:
            self.failure = exc
            raise
        except Exception as exc:  # sqlite3 errors (disk full, I/O)
            self.failure = StoreError(f"cannot persist MLS state: {exc}", field="state_dir")
            raise


def snapshot_epoch(state: bytes, group_id: bytes) -> int:
    """The epoch in an mls-rs serialized group state (checked against its group id).

    Reads only the head of the GroupContext (version, suite, group_id, epoch): this runs
    after every message, and a full decode cost ~40 us of the ~300 us seal+open budget.
    """
    r = Reader(state, _SNAPSHOT_HEADER)
    try:
        version, suite = r.uint(2, "state"), r.uint(2, "state")
        stored_id = OPAQUE.decode(r, "state")
        epoch = r.uint(8, "state")
    except WireError as exc:
        raise CryptoError(f"unexpected mls-rs state layout: {exc}", field="state") from exc
    if version != wire.MLS10 or suite != CIPHER_SUITE or stored_id != group_id:
        raise CryptoError("unexpected mls-rs state layout", field="state")
    return epoch
