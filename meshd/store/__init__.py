"""SQLite persistence for the node (stdlib sqlite3, WAL)."""

from meshd.store.store import (
    Store,
    StoredCustody,
    StoredOutbox,
    StoredPath,
    StoredPeer,
)

__all__ = ["Store", "StoredCustody", "StoredOutbox", "StoredPath", "StoredPeer"]
