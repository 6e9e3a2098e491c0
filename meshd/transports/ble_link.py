"""Configuration and the ``Link`` object of the BLE transport (``ble.py``)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from meshd.crypto.identity import PublicIdentity
from meshd.errors import HandshakeError
from meshd.router.events import LinkId
from meshd.router.frames import MAX_FRAME_LEN
from meshd.router.types import LinkInfo, LinkKind
from meshd.transports.base import Link
from meshd.transports.ble_gatt import CentralConnection
from meshd.transports.ble_session import BleSession, SessionConfig


@dataclass(frozen=True, slots=True)
class BleConfig:
    adapter: str = "hci0"
    max_links: int = 4
    connect_timeout: float = 10.0
    grace: float = 4.0  # the larger address connects after this long unlinked
    retry_after: float = 3.0  # per-device pause after a failed connection
    tick: float = 0.25
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    advert_refresh: float = 5.0
    rebalance_interval: float = 15.0  # REFERENCE: clusters rebalance every 15 s
    probe_timeout: float = 2.0  # a BlueZ disconnect: peripheral sessions must answer
    # Yield to the loop after each notification (see the module docstring); off only
    # to measure what happens without it (bench/ble_bench.py).
    pace_notifications: bool = True
    session: SessionConfig = field(default_factory=SessionConfig)


class BleLink(Link):
    """One authenticated link over one GATT session (either role)."""

    def __init__(
        self,
        session: BleSession,
        *,
        device: str,
        conn: CentralConnection | None,
        rssi: int | None,
        wake: Callable[[BleLink], None],
    ) -> None:
        self.session = session
        self.device = device
        self.conn = conn
        self.rssi = rssi
        self._wake = wake
        self.link_id: LinkId | None = None
        self.announced = False
        self.created = asyncio.get_running_loop().time()
        self.wakeup = asyncio.Event()
        self.probe_at: float | None = None

    @property
    def central(self) -> bool:
        return self.session.central

    @property
    def peer(self) -> PublicIdentity:
        if self.session.peer is None:
            raise HandshakeError("link not authenticated yet")
        return self.session.peer

    @property
    def info(self) -> LinkInfo:
        return LinkInfo(kind=LinkKind.BLE, quality=1.0, mtu=MAX_FRAME_LEN, rssi=self.rssi)

    @property
    def description(self) -> str:
        role = "central" if self.central else "peripheral"
        return f"ble {self.device} ({role}, session {self.session.session}, mtu {self.session.mtu})"

    def send(self, frame: bytes) -> None:
        if self.session.send_frame(frame):
            self._wake(self)

    def close(self) -> None:
        self.session.close("closed locally")
        self._wake(self)


class EphemeralCache:
    """Handshake first messages already answered (by ephemeral key): a replay is refused."""

    def __init__(self, capacity: int = 1024) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._capacity = capacity

    def fresh(self, ephemeral: bytes) -> bool:
        if ephemeral in self._seen:
            return False
        self._seen[ephemeral] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True
