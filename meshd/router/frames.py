"""Wire format v1: the fixed frame header that every relay parses.

Layout (big-endian, 46 bytes, see docs/wire-format.md)::

    0  version   u8   = 1
    1  type      u8   FrameType
    2  flags     u8   FrameFlags
    3  ttl       u8   hops left; a relay drops a frame whose ttl is 0 after decrement
    4  hops      u8   hops travelled so far
    5  attempt   u8   retransmission number of the originator (relay dedup key part)
    6  frame_id  8 bytes, random, chosen by the originator
   14  src       16 bytes NodeAddress of the originator
   30  dst       16 bytes NodeAddress of the destination (all 0xff: broadcast)
   46  body      opaque to relays for DATA; typed bodies for control frames

Link-local control frames (``type >= 0x40``) use a short header: version, type, then a
type-specific body; they never leave the link they were sent on.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from meshd.address import ADDRESS_LEN, NodeAddress
from meshd.errors import FrameDecodeError

WIRE_VERSION = 1
FRAME_ID_LEN = 8
HEADER_LEN = 46
MAX_BODY_LEN = 64 * 1024
MAX_FRAME_LEN = HEADER_LEN + MAX_BODY_LEN
MAX_TTL = 64
_HEADER = struct.Struct(">BBBBBB8s16s16s")
assert _HEADER.size == HEADER_LEN


class FrameType(enum.IntEnum):
    DATA = 0x01
    ACK = 0x02
    ANNOUNCE = 0x03
    PATH_REQUEST = 0x04
    PATH_REPLY = 0x05
    PATH_ERROR = 0x06
    CUSTODY_OFFER = 0x07
    CUSTODY_RECEIPT = 0x08
    # Link-local (short header), never forwarded.
    LINK_ACK = 0x40


LINK_LOCAL_TYPES = frozenset({FrameType.LINK_ACK})


class FrameFlags(enum.IntFlag):
    NONE = 0
    ACK_REQUESTED = 0x01
    FLOOD = 0x02
    CUSTODY_ALLOWED = 0x04
    LOW_PRIORITY = 0x08


_KNOWN_FLAGS = int(
    FrameFlags.ACK_REQUESTED
    | FrameFlags.FLOOD
    | FrameFlags.CUSTODY_ALLOWED
    | FrameFlags.LOW_PRIORITY
)
# Every received frame is decoded: FrameType(x) and FrameFlags(x) cost ~0.5 us each
# (enum __call__), these lookups ~20 ns (profiled, issue 3).
_TYPE_OF: Mapping[int, FrameType] = MappingProxyType({int(t): t for t in FrameType})
_FLAGS_OF: tuple[FrameFlags, ...] = tuple(FrameFlags(i) for i in range(_KNOWN_FLAGS + 1))


@dataclass(frozen=True, slots=True)
class Frame:
    """One mesh frame: the relay-visible header plus an opaque body."""

    type: FrameType
    frame_id: bytes
    src: NodeAddress
    dst: NodeAddress
    body: bytes = b""
    flags: FrameFlags = FrameFlags.NONE
    ttl: int = 16
    hops: int = 0
    attempt: int = 0

    def __post_init__(self) -> None:
        if len(self.frame_id) != FRAME_ID_LEN:
            raise FrameDecodeError(f"frame_id must be {FRAME_ID_LEN} bytes", field="frame_id")
        for name, value in (("ttl", self.ttl), ("hops", self.hops), ("attempt", self.attempt)):
            if not 0 <= value <= 255:
                raise FrameDecodeError(f"{name} out of range 0..255", field=name)
        if len(self.body) > MAX_BODY_LEN:
            raise FrameDecodeError(f"body longer than {MAX_BODY_LEN} bytes", field="body")

    def encode(self) -> bytes:
        return (
            _HEADER.pack(
                WIRE_VERSION,
                int(self.type),
                int(self.flags),
                self.ttl,
                self.hops,
                self.attempt,
                self.frame_id,
                self.src.raw,
                self.dst.raw,
            )
            + self.body
        )

    def hopped(self) -> Frame:
        """The frame as a relay sends it on: one hop more, one TTL less."""
        return replace(self, ttl=self.ttl - 1, hops=self.hops + 1)

    @property
    def dedup_key(self) -> tuple[bytes, int]:
        return (self.frame_id, self.attempt)


def decode_frame(data: bytes) -> Frame:
    """Decode a routed (full-header) frame; raise FrameDecodeError on anything malformed."""
    if len(data) < HEADER_LEN:
        raise FrameDecodeError(f"frame shorter than the {HEADER_LEN}-byte header")
    if len(data) > MAX_FRAME_LEN:
        raise FrameDecodeError(f"frame longer than {MAX_FRAME_LEN} bytes")
    version, ftype, flags, ttl, hops, attempt, frame_id, src, dst = _HEADER.unpack_from(data)
    if version != WIRE_VERSION:
        raise FrameDecodeError(f"unsupported wire version {version}", field="version")
    frame_type = _TYPE_OF.get(ftype)
    if frame_type is None:
        raise FrameDecodeError(f"unknown frame type 0x{ftype:02x}", field="type")
    if frame_type in LINK_LOCAL_TYPES:
        raise FrameDecodeError("link-local type in a routed frame", field="type")
    if flags & ~_KNOWN_FLAGS:
        raise FrameDecodeError(f"unknown flags 0x{flags:02x}", field="flags")
    return Frame(
        type=frame_type,
        flags=_FLAGS_OF[flags],
        ttl=ttl,
        hops=hops,
        attempt=attempt,
        frame_id=frame_id,
        src=NodeAddress(src),
        dst=NodeAddress(dst),
        body=bytes(data[HEADER_LEN:]),
    )


def peek_type(data: bytes) -> FrameType:
    """The type of a frame without decoding the rest (dispatch short vs full header)."""
    if len(data) < 2:
        raise FrameDecodeError("frame shorter than 2 bytes")
    if data[0] != WIRE_VERSION:
        raise FrameDecodeError(f"unsupported wire version {data[0]}", field="version")
    frame_type = _TYPE_OF.get(data[1])
    if frame_type is None:
        raise FrameDecodeError(f"unknown frame type 0x{data[1]:02x}", field="type")
    return frame_type


assert ADDRESS_LEN == 16
