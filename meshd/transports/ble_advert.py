"""meshd's BLE identifiers and the compact node summary it advertises (sans-IO).

The advertisement carries meshd's 128-bit service UUID (so centrals can filter scans) and
6 bytes of manufacturer data under company id 0xFFFF (the Bluetooth SIG's id for testing
and internal use). Legacy advertising allows 31 bytes: flags 3 + the UUID 18 + manufacturer
data 4 + 6 = 31, so the summary is exactly 6 bytes::

    0  ver_slots  u8   protocol version (high 4 bits) | free connection slots (low 4, capped 15)
    1  battery    u8   bit 7 charging, bits 0-6 level 0..100, 127 unknown (mains)
    2  addr       2B   first two bytes of the node address (itself a key hash): lets a
                       central skip nodes it is already linked to and decide who connects
    4  cluster    u16  the router's 32-bit cluster signature folded to 16 bits (XOR of
                       halves); 0 when unknown

Everything here is a hint for choosing whom to connect to: identities are proven by the
link handshake, never by the advertisement.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshd.errors import FrameDecodeError, WireError

# One fixed UUID set (random, version 4), documented in docs/wire-format.md "BLE".
SERVICE_UUID = "65c311ad-b5d5-4918-a381-793100798500"
RX_CHAR_UUID = "65c311ad-b5d5-4918-a381-793100798501"  # central -> peripheral, write w/ resp
TX_CHAR_UUID = "65c311ad-b5d5-4918-a381-793100798502"  # peripheral -> central, notify
COMPANY_ID = 0xFFFF
PROTOCOL_VERSION = 1
SUMMARY_LEN = 6
BATTERY_UNKNOWN = 127
MAX_SLOTS = 15


@dataclass(frozen=True, slots=True)
class AdvertSummary:
    version: int
    free_slots: int
    battery: int | None  # None: no battery (mains power)
    charging: bool
    addr: bytes  # 2-byte address prefix
    cluster: int  # 16-bit folded cluster id, 0 unknown

    def encode(self) -> bytes:
        if not 0 <= self.version <= 15:
            raise WireError(f"version {self.version} out of range", field="advert.version")
        if self.battery is not None and not 0 <= self.battery <= 100:
            raise WireError(f"battery {self.battery} out of range", field="advert.battery")
        if len(self.addr) != 2:
            raise WireError("address prefix must be 2 bytes", field="advert.addr")
        if not 0 <= self.cluster <= 0xFFFF:
            raise WireError(f"cluster {self.cluster} out of range", field="advert.cluster")
        slots = max(0, min(MAX_SLOTS, self.free_slots))
        level = BATTERY_UNKNOWN if self.battery is None else self.battery
        return (
            bytes(((self.version << 4) | slots, (0x80 if self.charging else 0) | level))
            + self.addr
            + self.cluster.to_bytes(2, "big")
        )

    @classmethod
    def decode(cls, data: bytes) -> AdvertSummary:
        if len(data) != SUMMARY_LEN:
            raise FrameDecodeError(
                f"summary is {len(data)} bytes, expected {SUMMARY_LEN}", field="advert"
            )
        level = data[1] & 0x7F
        if level > 100 and level != BATTERY_UNKNOWN:
            raise FrameDecodeError(f"battery level {level} out of range", field="advert.battery")
        return cls(
            version=data[0] >> 4,
            free_slots=data[0] & 0x0F,
            battery=None if level == BATTERY_UNKNOWN else level,
            charging=bool(data[1] & 0x80),
            addr=bytes(data[2:4]),
            cluster=int.from_bytes(data[4:6], "big"),
        )


def fold_cluster(cluster_id: int | None) -> int:
    """The router's 32-bit cluster signature as the advert's 16 bits."""
    if not cluster_id:
        return 0
    value = cluster_id & 0xFFFFFFFF
    return ((value >> 16) ^ value) & 0xFFFF


def summary_from_advert(manufacturer_data: dict[int, bytes]) -> AdvertSummary | None:
    """The summary in a scan result's manufacturer data, None if absent or not ours."""
    data = manufacturer_data.get(COMPANY_ID)
    if data is None:
        return None
    try:
        summary = AdvertSummary.decode(bytes(data))
    except FrameDecodeError:
        return None
    return summary if summary.version == PROTOCOL_VERSION else None
