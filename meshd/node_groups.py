"""The node's group half: MLS groups, rosters and roles, fan-out, commits, catch-up.

``meshd.node.Node`` inherits this mixin; the node calls the ``_groups_*`` hooks from its
lifecycle. Payload kinds 0x20..0x2F (``meshd.e2e.kinds``) land here.
"""

from __future__ import annotations

from typing import Any

from meshd.router.events import MessageReceived


class GroupMessages:
    """Mixin for ``Node``: groups (filled in by the group layer)."""

    log: Any

    def _groups_start(self, now: float) -> None:
        """Called by ``Node.start`` once the core exists, before transports start."""

    def _groups_stop(self) -> None:
        """Called by ``Node.stop`` before the store closes."""

    def _group_payload(self, event: MessageReceived, wall: float) -> None:
        self.log.warning(
            "e2e_payload_unsupported", peer=event.src.short, kind=event.payload[0], layer="group"
        )
