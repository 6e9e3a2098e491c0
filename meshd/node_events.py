"""The node's sink for the mesh core's events: what each one changes in SQLite and
what apps see of it (``Node._pump`` drains the core into ``_handle_event``).

Received payloads go to the layer their first byte names (``meshd.e2e.kinds``): 1:1
sessions (``meshd.node_sessions``), groups (``meshd.node_groups``); plaintext is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from meshd.e2e.kinds import PayloadFamily, family_of
from meshd.node_api import AppEventKind
from meshd.router.events import (
    CoreEvent,
    CustodyReleased,
    CustodyTaken,
    DeliveryState,
    DeliveryStateChanged,
    FrameRejected,
    LinkAdviceChanged,
    LinkId,
    MessageReceived,
    NeighbourDown,
    NeighbourUp,
    PathChanged,
    PeerIdentityLearned,
)
from meshd.sendwindow import SendWindow
from meshd.store import Store
from meshd.store.router_state import RouterState
from meshd.transports.base import Link, Transport

if TYPE_CHECKING:
    from meshd.identity_service import IdentityService


class CoreEventSink:
    """Mixin for ``Node``: persist core events; the hooks are the e2e mixins'."""

    # Set by Node.__init__.
    store: Store
    log: Any
    trust: IdentityService
    _debug: bool
    _running: bool
    _window: SendWindow
    _links: dict[LinkId, tuple[Link, Transport]]
    _router_state: RouterState

    if TYPE_CHECKING:

        def _wall_offset(self) -> float: ...

        def _groups_delivery(self, event: DeliveryStateChanged, wall: float) -> bool: ...

        def _sessions_delivery(
            self, event: DeliveryStateChanged
        ) -> DeliveryStateChanged | None: ...

        def _session_payload(self, event: MessageReceived, wall: float) -> None: ...

        def _group_payload(self, event: MessageReceived, wall: float) -> None: ...

        def _sessions_plaintext(self, event: MessageReceived, wall: float) -> None: ...

        def _sessions_peer_learned(self, event: PeerIdentityLearned, wall: float) -> None: ...

    def _handle_event(self, event: CoreEvent, wall: float) -> None:
        """Persist one core event (and what apps should see of it)."""
        store = self.store
        if isinstance(event, MessageReceived):
            self._message_received(event, wall)
            return
        if isinstance(event, DeliveryStateChanged):
            if self._groups_delivery(event, wall):  # a group payload (meshd/node_groups.py)
                return
            mapped = self._sessions_delivery(event)  # re-send carriers -> app message ids
            if mapped is None:
                return
            event = mapped
            if event.state is DeliveryState.SENT:
                self._window.sent(event.dst, event.message_id)
            else:
                self._window.left(event.dst, event.message_id)
            store.set_outgoing_state(
                event.message_id, event.state, event.reason, at=wall
            )
            if self._debug:
                self.log.debug(
                    "delivery_state",
                    message_id=event.message_id.hex(),
                    peer=event.dst.short,
                    state=event.state.value,
                    reason=event.reason,
                )
            return
        if isinstance(event, CustodyTaken | CustodyReleased):
            self._router_state.on_custody_event(event, wall=wall, offset=self._wall_offset())
            return
        if isinstance(event, NeighbourUp | NeighbourDown):
            up = isinstance(event, NeighbourUp)
            kind = AppEventKind.NEIGHBOUR_UP if up else AppEventKind.NEIGHBOUR_DOWN
            entry = self._links.get(event.link_id)
            detail = entry[0].description if entry else ""
            store.append_event(None, kind, wall, peer=event.peer, detail=detail)
            self.log.info("neighbour_up" if up else "neighbour_down", peer=event.peer.short)
            return
        if isinstance(event, PathChanged):
            if event.next_hop is None:
                if self._running:  # not lost to our own stop: kept as a hint for the restart
                    store.delete_path(event.dst)
                detail = "lost"
            else:
                store.set_path(event.dst, event.next_hop, event.hops, event.cost, now=wall)
                detail = f"via {event.next_hop.text} hops={event.hops} cost={event.cost:.3g}"
            store.append_event(None, AppEventKind.PATH_CHANGED, wall, peer=event.dst, detail=detail)
            if self._debug:
                self.log.debug("path_changed", peer=event.dst.short, detail=detail)
            return
        if isinstance(event, PeerIdentityLearned):
            store.upsert_peer(event.identity, now=wall)
            self.trust.observe(event.address, event.identity, wall=wall)
            self._sessions_peer_learned(event, wall)
            return
        if isinstance(event, LinkAdviceChanged):
            entry = self._links.get(event.link_id)
            if entry is not None:
                entry[1].advise(event.link_id, event.keep)
            return
        if isinstance(event, FrameRejected):
            entry = self._links.get(event.link_id)
            self.log.warning(
                "frame_rejected",
                link=event.link_id,
                peer=entry[0].peer.address.short if entry else None,
                reason=event.reason,
            )

    def _message_received(self, event: MessageReceived, wall: float) -> None:
        family = family_of(event.payload)
        if family is PayloadFamily.SESSION:
            self._session_payload(event, wall)
            return
        if family is PayloadFamily.GROUP:
            self._group_payload(event, wall)
            return
        if family is PayloadFamily.PLAINTEXT:  # user messages must be end-to-end encrypted
            self._sessions_plaintext(event, wall)
            return
        # An unassigned first byte (meshd.e2e.kinds): acknowledged by the core, no layer
        # to give it to. Say so loudly.
        self.log.warning(
            "payload_kind_unknown",
            peer=event.src.short,
            message_id=event.message_id.hex(),
            kind=event.payload[0] if event.payload else None,
        )
