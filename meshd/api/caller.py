"""Who is calling: SO_PEERCRED (via the relay's registry) plus the ``meshd-app`` metadata."""

from __future__ import annotations

import re
from typing import Any

from meshd.api.relay import CredentialRegistry
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


class CallerResolver:
    def __init__(self, registry: CredentialRegistry) -> None:
        self._registry = registry

    def caller(self, context: Any) -> Caller:
        """The kernel-verified identity of this call's connection plus its declared app."""
        conn = self._registry.lookup(context.peer())
        app_id = app_id_from_metadata(context.invocation_metadata())
        cred = conn.cred
        return Caller(
            uid=cred.uid, gid=cred.gid, pid=cred.pid, app_id=app_id, is_admin=conn.is_admin
        )
