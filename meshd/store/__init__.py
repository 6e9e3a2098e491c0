"""SQLite persistence for the node (stdlib sqlite3, WAL)."""

from meshd.store.store import (
    Store,
    StoredOutbox,
    StoredPath,
    StoredPeer,
)

__all__ = ["Store", "StoredOutbox", "StoredPath", "StoredPeer"]
