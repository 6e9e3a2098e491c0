"""Who is calling: SO_PEERCRED (via the relay's registry) plus the ``meshd-app`` metadata."""

from __future__ import annotations

import re
from typing import Any

from meshd.api.relay import Connection, CredentialRegistry
from meshd.errors import InvalidArgument
from meshd.node_api import Caller

APP_METADATA_KEY = "meshd-app"
DEFAULT_APP_ID = "default"
_APP_ID = re.compile(r"[a-z0-9._-]{1,64}")


def validate_app_id(app_id: str) -> str:
    if not _APP_ID.fullmatch(app_id):
        raise InvalidArgument(
            f"app id must match [a-z0-9._-]{{1,64}}, got {app_id[:80]!r}", field=APP_METADATA_KEY
        )
    return app_id


def app_id_from_metadata(metadata: Any) -> str:
    """The declared app id in gRPC invocation metadata (``(key, value)`` pairs)."""
    values = [v for k, v in (metadata or ()) if k == APP_METADATA_KEY]
    if not values:
        return DEFAULT_APP_ID
    if len(values) > 1:
        raise InvalidArgument("given more than once", field=APP_METADATA_KEY)
    value = values[0]
    if isinstance(value, bytes):
        raise InvalidArgument("must be text", field=APP_METADATA_KEY)
    return validate_app_id(str(value))


_CALLER_CACHE = 1024


class CallerResolver:
    def __init__(self, registry: CredentialRegistry) -> None:
        self._registry = registry
        # (connection, metadata) -> Caller: a pure function of both (the Connection holds
        # the kernel's credentials by value), so a hit is the same answer. Saves the
        # metadata scan, the app id regex and the frozen dataclass on every call (1.3 % of
        # the sending daemon's CPU). Bounded: metadata comes from callers.
        self._cache: dict[tuple[Connection, Any], Caller] = {}

    def caller(self, context: Any) -> Caller:
        """The kernel-verified identity of this call's connection plus its declared app."""
        conn = self._registry.lookup(context.peer())
        metadata = context.invocation_metadata()
        try:
            key = (conn, tuple(metadata or ()))
            cached = self._cache.get(key)
        except TypeError:  # unhashable metadata values: no cache
            key, cached = None, None
        if cached is not None:
            return cached
        app_id = app_id_from_metadata(metadata)
        cred = conn.cred
        caller = Caller(
            uid=cred.uid, gid=cred.gid, pid=cred.pid, app_id=app_id, is_admin=conn.is_admin
        )
        if key is not None:
            if len(self._cache) >= _CALLER_CACHE:
                self._cache.clear()
            self._cache[key] = caller
        return caller
