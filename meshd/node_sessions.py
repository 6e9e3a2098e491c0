"""The node's 1:1 end-to-end half: MLS sessions, key packages, connection requests.

``meshd.node.Node`` inherits this mixin; the node calls the ``_sessions_*`` hooks from its
lifecycle and its pump. Payload kinds 0x10..0x1F (``meshd.e2e.kinds``) land here.
"""

from __future__ import annotations

from typing import Any

from meshd.router.events import MessageReceived, PeerIdentityLearned


class SessionMessages:
    """Mixin for ``Node``: 1:1 sessions (filled in by the session layer)."""

    log: Any

    def _sessions_start(self, now: float) -> None:
        """Called by ``Node.start`` once the core exists, before transports start."""

    def _sessions_stop(self) -> None:
        """Called by ``Node.stop`` before the store closes."""

    def _sessions_peer_learned(self, event: PeerIdentityLearned, wall: float) -> None:
        """A verified announce (with its extensions) of ``event.address`` arrived."""

    def _session_payload(self, event: MessageReceived, wall: float) -> None:
        self.log.warning(
            "e2e_payload_unsupported", peer=event.src.short, kind=event.payload[0], layer="session"
        )
