"""What the sans-IO 1:1 session layer asks its node to do (meshd/e2e/sessions.py)."""

from __future__ import annotations

from dataclasses import dataclass

from meshd.address import NodeAddress


@dataclass(frozen=True, slots=True)
class SendPayload:
    """Hand ``payload`` to the core as message ``carrier_id`` (None: let the core pick)."""

    dst: NodeAddress
    payload: bytes
    carrier_id: bytes | None
    lifetime: float | None = None


@dataclass(frozen=True, slots=True)
class Deliver:
    """A decrypted app message for the app ``app_id``."""

    src: NodeAddress
    message_id: bytes
    app_id: str
    content: bytes
    hops: int


@dataclass(frozen=True, slots=True)
class Notice:
    """Something apps and the log should see (``kind``: an AppEventKind value)."""

    kind: str
    peer: NodeAddress
    detail: str
    app_id: str | None = None
    warning: bool = False


@dataclass(frozen=True, slots=True)
class Expired:
    """A message that waited for a session past its lifetime."""

    message_id: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class Opened:
    """Messages the core reported delivered while the peer had not joined the session
    (held as a connection request, or its proof of joining on its way): the peer has
    joined now, so they are DELIVERED for the app (E2eSessions.defer_delivered)."""

    message_ids: tuple[bytes, ...]


Action = SendPayload | Deliver | Notice | Expired | Opened

__all__ = ["Action", "Deliver", "Expired", "Notice", "Opened", "SendPayload"]
