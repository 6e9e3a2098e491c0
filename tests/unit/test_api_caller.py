"""CallerResolver: credentials from the relay's registry plus the declared app id."""

from __future__ import annotations

from typing import Any

import pytest

from meshd.api import caller as caller_mod
from meshd.api.caller import CallerResolver
from meshd.api.peercred import PeerCred
from meshd.api.relay import Connection, CredentialRegistry
from meshd.errors import InvalidArgument, PermissionDenied


class _Ctx:
    def __init__(self, peer: str, metadata: Any) -> None:
        self._peer = peer
        self._metadata = metadata

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> Any:
        return self._metadata


def _resolver() -> tuple[CallerResolver, CredentialRegistry]:
    registry = CredentialRegistry()
    registry.add("/r/1", Connection(PeerCred(pid=10, uid=1000, gid=100), is_admin=False))
    registry.add("/r/2", Connection(PeerCred(pid=20, uid=1001, gid=100), is_admin=True))
    return CallerResolver(registry), registry


def test_each_connection_and_app_gets_its_own_caller_also_when_repeated() -> None:
    resolver, _ = _resolver()
    for _ in range(3):  # the second and third round come from the cache
        a = resolver.caller(_Ctx("unix:/r/1", (("meshd-app", "chat"),)))
        b = resolver.caller(_Ctx("unix:/r/2", (("meshd-app", "chat"),)))
        c = resolver.caller(_Ctx("unix:/r/1", (("meshd-app", "mail"),)))
        d = resolver.caller(_Ctx("unix:/r/1", ()))
        assert (a.uid, a.pid, a.app_id, a.is_admin) == (1000, 10, "chat", False)
        assert (b.uid, b.pid, b.app_id, b.is_admin) == (1001, 20, "chat", True)
        assert (c.uid, c.app_id) == (1000, "mail")
        assert d.app_id == "default"


def test_bad_app_id_and_unknown_connection_fail_every_time() -> None:
    resolver, registry = _resolver()
    for _ in range(2):
        with pytest.raises(InvalidArgument):
            resolver.caller(_Ctx("unix:/r/1", (("meshd-app", "Bad App"),)))
    resolver.caller(_Ctx("unix:/r/1", (("meshd-app", "chat"),)))
    registry.remove("/r/1")  # the connection closed: its cached caller must not answer
    with pytest.raises(PermissionDenied):
        resolver.caller(_Ctx("unix:/r/1", (("meshd-app", "chat"),)))


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(caller_mod, "_CALLER_CACHE", 4)
    resolver, _ = _resolver()
    for i in range(10):
        got = resolver.caller(_Ctx("unix:/r/1", (("meshd-app", f"app{i}"),)))
        assert got.app_id == f"app{i}"
    assert len(resolver._cache) <= 4
