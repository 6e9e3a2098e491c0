"""Signed end-to-end ACKs received by a sender: checks, then delivery and RTT samples.

Split out of :mod:`meshd.router.reliability` (module size): ``Endpoint`` inherits
:class:`AckHandling`, which only reads and updates the endpoint state declared below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from meshd.address import NodeAddress
from meshd.crypto.identity import PublicIdentity
from meshd.router.e2e_bodies import AckBatchBody, decode_any_ack
from meshd.router.events import DeliveryState
from meshd.router.frames import Frame

if TYPE_CHECKING:
    from meshd.router.backoff import ProbeGate, RttTable
    from meshd.router.e2e_common import EndpointStats
    from meshd.router.outbox import Outbox, OutgoingMessage

# Signer key -> address, for ACK checks: re-deriving it (SHA-256 + NodeAddress) on every
# ACK was 1.4-2.3 % of a sending daemon's CPU (profiled, issue 3). Peers ACKing us at once
# are few; past this many keys the oldest is forgotten.
SIGNER_CACHE_SIZE = 1024


class AckHandling:
    """The sender's side of end-to-end ACKs (single and batched), mixed into ``Endpoint``."""

    # Set by Endpoint.__init__ (annotations only: no class-level state).
    _address: NodeAddress
    _outbox: Outbox
    _rtt: RttTable
    _probes: ProbeGate
    _signer_addresses: dict[bytes, NodeAddress]
    stats: EndpointStats

    if TYPE_CHECKING:

        def path_available(self, dst: NodeAddress, *, now: float) -> None: ...

        def _finish(
            self, message: OutgoingMessage, state: DeliveryState, reason: str | None = None
        ) -> None: ...

    def _on_ack(
        self, frame: Frame, now: float, key_of: Callable[[NodeAddress], PublicIdentity | None]
    ) -> None:
        body = decode_any_ack(frame.body)
        if isinstance(body, AckBatchBody):
            self._on_ack_batch(frame, body, now, key_of)
            return
        message = self._outbox.get(body.message_id)
        if message is None or message.dst != frame.src:
            self.stats.acks_unknown += 1
            return
        known = key_of(frame.src)
        if known is not None and known.signing_key != body.signer_key:
            self.stats.acks_forged += 1
            return
        if not body.verify(sender=self._address, destination=message.dst,
                           digest=message.digest,
                           signer_address=self._signer_address(body.signer_key)):
            self.stats.acks_forged += 1
            return
        self.stats.acks_verified += 1
        self._acked(message, body.echo_attempt, now)

    def _on_ack_batch(
        self, frame: Frame, body: AckBatchBody, now: float,
        key_of: Callable[[NodeAddress], PublicIdentity | None],
    ) -> None:
        pending = []
        for entry in body.entries:
            message = self._outbox.get(entry.message_id)
            if message is None or message.dst != frame.src:
                self.stats.acks_unknown += 1
            else:
                pending.append((message, entry))
        if not pending:  # nothing of ours: not worth a signature check
            return
        known = key_of(frame.src)
        if (known is not None and known.signing_key != body.signer_key) or not body.verify(
            sender=self._address, destination=frame.src,
            signer_address=self._signer_address(body.signer_key),
        ):
            self.stats.acks_forged += len(pending)
            return
        for message, entry in pending:
            if self._outbox.get(entry.message_id) is not message:  # listed twice
                continue
            # Signed by the destination, but for the content it got: it must be ours.
            if entry.digest != message.digest:
                self.stats.acks_forged += 1
                continue
            self.stats.acks_verified += 1
            self._acked(message, entry.echo_attempt, now)

    def _acked(self, message: OutgoingMessage, echo_attempt: int, now: float) -> None:
        if (
            message.last_sent_at is not None
            and echo_attempt == message.last_attempt_byte
            and message.state is not DeliveryState.HELD_BY_CUSTODIAN  # a custodian's copy
        ):
            self._rtt.sample(message.dst, now - message.last_sent_at)
        self._finish(message, DeliveryState.DELIVERED)
        if not self._probes.may_probe(message.dst, now):
            # That was the probe for an unroutable destination: the others can go now.
            self.path_available(message.dst, now=now)

    def _signer_address(self, signing_key: bytes) -> NodeAddress:
        """``NodeAddress.from_public_key``, remembered for the last SIGNER_CACHE_SIZE keys."""
        cache = self._signer_addresses
        address = cache.get(signing_key)
        if address is None:
            address = NodeAddress.from_public_key(signing_key)
            if len(cache) >= SIGNER_CACHE_SIZE:
                del cache[next(iter(cache))]
            cache[signing_key] = address
        return address
