"""MeshCore: the sans-IO mesh node (routing + reliability + custody) behind one facade.

Contract for adapters (daemon, simulator, tests), in the style of aioquic's connection:

* Feed it: ``link_up``/``link_down``/``receive`` from transports, ``send`` from apps,
  ``set_battery``, and ``handle_timer`` when ``next_deadline()`` has passed.
  Every call takes ``now`` (seconds, float, monotonic) keyword-only.
* Drain it: ``frames_to_send()`` -> ``[(link_id, frame_bytes)]`` to write on links,
  ``next_event()`` until None for app/daemon events (``meshd.router.events``),
  then re-arm one timer at ``next_deadline()``.
* It never reads a clock, sleeps, logs globally, or touches a socket. Randomness comes
  from the ``rng`` passed in (seeded in tests and the simulator).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity, PublicIdentity
from meshd.router.events import CoreEvent, LinkId
from meshd.router.types import LinkInfo, NeighbourInfo, OutboxEntry, RouteInfo


@dataclass(frozen=True, slots=True)
class CoreConfig:
    """Tunables; defaults are the daemon's. See REFERENCE.md for where numbers come from."""

    message_lifetime: float = 7 * 24 * 3600.0
    outbox_limit: int = 10_000
    custody_limit_bytes: int = 64 * 1024 * 1024
    custody_limit_frames: int = 10_000
    custody_lifetime: float = 7 * 24 * 3600.0
    announce_interval: float = 60.0
    default_ttl: int = 32
    flood_ttl: int = 16


class MeshCore:
    """One mesh node's protocol state. Several instances may live in one process."""

    def __init__(
        self,
        identity: Identity,
        *,
        now: float,
        rng: random.Random,
        config: CoreConfig | None = None,
    ) -> None:
        raise NotImplementedError

    # --- inputs -----------------------------------------------------------------
    def link_up(
        self, link_id: LinkId, peer: PublicIdentity, info: LinkInfo, *, now: float
    ) -> None:
        """A transport finished an authenticated handshake with ``peer`` on ``link_id``."""
        raise NotImplementedError

    def link_changed(self, link_id: LinkId, info: LinkInfo, *, now: float) -> None:
        raise NotImplementedError

    def link_down(self, link_id: LinkId, *, now: float) -> None:
        raise NotImplementedError

    def receive(self, link_id: LinkId, data: bytes, *, now: float) -> None:
        """Bytes of one whole frame from a link. Malformed input never raises."""
        raise NotImplementedError

    def send(
        self,
        dst: NodeAddress,
        payload: bytes,
        *,
        now: float,
        lifetime: float | None = None,
        message_id: bytes | None = None,
    ) -> bytes:
        """Queue an end-to-end reliable message; returns its 8-byte message id."""
        raise NotImplementedError

    def restore(self, entries: list[OutboxEntry], *, now: float) -> None:
        """Reload outbox entries persisted by the daemon (after a restart)."""
        raise NotImplementedError

    def set_battery(self, level: int, *, charging: bool, now: float) -> None:
        raise NotImplementedError

    def handle_timer(self, *, now: float) -> None:
        raise NotImplementedError

    # --- outputs ----------------------------------------------------------------
    def frames_to_send(self) -> list[tuple[LinkId, bytes]]:
        raise NotImplementedError

    def next_event(self) -> CoreEvent | None:
        raise NotImplementedError

    def next_deadline(self) -> float | None:
        raise NotImplementedError

    # --- inspection -------------------------------------------------------------
    @property
    def address(self) -> NodeAddress:
        raise NotImplementedError

    def neighbours(self) -> list[NeighbourInfo]:
        raise NotImplementedError

    def routes(self) -> list[RouteInfo]:
        raise NotImplementedError

    def outbox(self) -> list[OutboxEntry]:
        raise NotImplementedError

    def public_identity_of(self, address: NodeAddress) -> PublicIdentity | None:
        raise NotImplementedError
