"""Codecs for the routing control bodies: ANNOUNCE, PATH_REQUEST, PATH_REPLY, PATH_ERROR,
and the link-local LINK_ACK short frame. Layouts are in docs/wire-format.md.

Every decoder raises ``FrameDecodeError`` (naming the field) on malformed input and
nothing else; encoders validate ranges the same way so that a bad value never reaches
the wire.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from meshd.address import ADDRESS_LEN, NodeAddress
from meshd.crypto.identity import KEY_LEN, SIGNATURE_LEN, PublicIdentity, verify_signature
from meshd.errors import FrameDecodeError
from meshd.router.frames import FRAME_ID_LEN, WIRE_VERSION, FrameType

PREFIX_LEN = 4  # neighbour address prefixes: enough to tell neighbours apart locally
MAX_NEIGHBOURS_LISTED = 32
MAX_EXTENSIONS_LEN = 16 * 1024
BATTERY_UNKNOWN = 255
COST_SCALE = 16  # costs travel as u16 fixed point, 1/16 units (max ~4096)
MAX_WIRE_COST = 0xFFFF
ANNOUNCE_CONTEXT = b"meshd/announce/v1"

_ANN_FIXED = struct.Struct(">32s32sIBBBIHB")  # keys, seq, battery, status, degree, cluster, caps, n
_PREQ_FIXED = struct.Struct(">IIHBB")  # origin_seq, dst_seq, cost, flags, n_covered
_PREP_FIXED = struct.Struct(">HH8s")  # cost, lifetime, request id
_PERR_ENTRY = struct.Struct(">16sI")
_LACK_ENTRY = struct.Struct(">8sB")
MAX_LINK_ACKS = 64
MAX_PATH_ERRORS = 64

STATUS_CHARGING = 0x01

PREQ_UNKNOWN_SEQ = 0x01  # origin knows no sequence number for the destination
PREQ_LEAF = 0x02  # the receiver installs the reverse path and may answer but must not relay
PREQ_FULL = 0x04  # every receiver relays to every neighbour (retry after a failed discovery)
_PREQ_KNOWN_FLAGS = PREQ_UNKNOWN_SEQ | PREQ_LEAF | PREQ_FULL


def _need(data: bytes, size: int, field: str) -> None:
    if len(data) < size:
        raise FrameDecodeError(f"{field} truncated", field=field)


def _u16(value: int, field: str) -> int:
    if not 0 <= value <= 0xFFFF:
        raise FrameDecodeError(f"{field} out of range 0..65535", field=field)
    return value


def _u32(value: int, field: str) -> int:
    if not 0 <= value <= 0xFFFFFFFF:
        raise FrameDecodeError(f"{field} out of range 0..2^32-1", field=field)
    return value


def _prefixes(values: tuple[bytes, ...], field: str) -> bytes:
    if len(values) > MAX_NEIGHBOURS_LISTED:
        raise FrameDecodeError(f"{field}: at most {MAX_NEIGHBOURS_LISTED} entries", field=field)
    if any(len(v) != PREFIX_LEN for v in values):
        raise FrameDecodeError(f"{field}: entries are {PREFIX_LEN} bytes", field=field)
    return b"".join(values)


def _split_prefixes(data: bytes, count: int) -> tuple[bytes, ...]:
    return tuple(data[i : i + PREFIX_LEN] for i in range(0, count * PREFIX_LEN, PREFIX_LEN))


def prefix_of(address: NodeAddress) -> bytes:
    return address.raw[:PREFIX_LEN]


def wire_cost(cost: float) -> int:
    """Cost as carried on the wire (saturating, never negative)."""
    return max(0, min(MAX_WIRE_COST, round(cost * COST_SCALE)))


# --- ANNOUNCE ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Announce:
    """A node's signed self-description, sent to neighbours (and carried in path replies)."""

    signing_key: bytes
    exchange_key: bytes
    seq: int
    battery: int  # 0..100, BATTERY_UNKNOWN
    charging: bool
    degree: int
    cluster_id: int
    capabilities: int
    neighbours: tuple[bytes, ...]  # PREFIX_LEN-byte address prefixes
    extensions: bytes
    signature: bytes

    @property
    def identity(self) -> PublicIdentity:
        return PublicIdentity(self.signing_key, self.exchange_key)

    @property
    def address(self) -> NodeAddress:
        return NodeAddress.from_public_key(self.signing_key)

    def signed_part(self) -> bytes:
        if len(self.signing_key) != KEY_LEN or len(self.exchange_key) != KEY_LEN:
            raise FrameDecodeError("announce keys are 32 bytes", field="signing_key")
        if not 0 <= self.battery <= 100 and self.battery != BATTERY_UNKNOWN:
            raise FrameDecodeError("battery is 0..100 or 255", field="battery")
        if not 0 <= self.degree <= 255:
            raise FrameDecodeError("degree out of range 0..255", field="degree")
        if len(self.extensions) > MAX_EXTENSIONS_LEN:
            raise FrameDecodeError(
                f"extensions over {MAX_EXTENSIONS_LEN} bytes", field="extensions"
            )
        status = STATUS_CHARGING if self.charging else 0
        return (
            _ANN_FIXED.pack(
                self.signing_key,
                self.exchange_key,
                _u32(self.seq, "seq"),
                self.battery,
                status,
                self.degree,
                _u32(self.cluster_id, "cluster_id"),
                _u16(self.capabilities, "capabilities"),
                len(self.neighbours),
            )
            + _prefixes(self.neighbours, "neighbours")
            + struct.pack(">H", len(self.extensions))
            + self.extensions
        )

    def encode(self) -> bytes:
        if len(self.signature) != SIGNATURE_LEN:
            raise FrameDecodeError("signature is 64 bytes", field="signature")
        return self.signed_part() + self.signature

    def verify(self) -> bool:
        return verify_signature(
            self.signing_key, self.signature, ANNOUNCE_CONTEXT + self.signed_part()
        )


def decode_announce(data: bytes) -> Announce:
    _need(data, _ANN_FIXED.size, "announce")
    keys_s, keys_x, seq, battery, status, degree, cluster, caps, n = _ANN_FIXED.unpack_from(data)
    if battery > 100 and battery != BATTERY_UNKNOWN:
        raise FrameDecodeError("battery is 0..100 or 255", field="battery")
    if status & ~STATUS_CHARGING:
        raise FrameDecodeError(f"unknown status bits 0x{status:02x}", field="status")
    if n > MAX_NEIGHBOURS_LISTED:
        raise FrameDecodeError(f"more than {MAX_NEIGHBOURS_LISTED} neighbours", field="neighbours")
    pos = _ANN_FIXED.size
    _need(data, pos + n * PREFIX_LEN + 2, "neighbours")
    neighbours = _split_prefixes(data[pos:], n)
    pos += n * PREFIX_LEN
    (ext_len,) = struct.unpack_from(">H", data, pos)
    pos += 2
    if ext_len > MAX_EXTENSIONS_LEN:
        raise FrameDecodeError(f"extensions over {MAX_EXTENSIONS_LEN} bytes", field="extensions")
    _need(data, pos + ext_len + SIGNATURE_LEN, "extensions")
    extensions = bytes(data[pos : pos + ext_len])
    pos += ext_len
    if len(data) != pos + SIGNATURE_LEN:
        raise FrameDecodeError("trailing bytes after the signature", field="signature")
    return Announce(
        signing_key=bytes(keys_s),
        exchange_key=bytes(keys_x),
        seq=seq,
        battery=battery,
        charging=bool(status & STATUS_CHARGING),
        degree=degree,
        cluster_id=cluster,
        capabilities=caps,
        neighbours=neighbours,
        extensions=extensions,
        signature=bytes(data[pos:]),
    )


# --- PATH_REQUEST -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathRequest:
    """AODV-style route request; the header's frame_id is the request id (dedup key)."""

    origin_seq: int
    dst_seq: int
    cost: int  # wire units (1/16), accumulated from the origin up to the sender of this copy
    flags: int = 0
    covered: tuple[bytes, ...] = ()  # prefixes of the sender and the neighbours it sent to
    origin_announce: bytes = b""  # the origin's signed announce, so the target learns its key

    def encode(self) -> bytes:
        if self.flags & ~_PREQ_KNOWN_FLAGS:
            raise FrameDecodeError(f"unknown flags 0x{self.flags:02x}", field="flags")
        if len(self.origin_announce) > MAX_EXTENSIONS_LEN + 512:
            raise FrameDecodeError("origin announce too long", field="origin_announce")
        return (
            _PREQ_FIXED.pack(
                _u32(self.origin_seq, "origin_seq"),
                _u32(self.dst_seq, "dst_seq"),
                _u16(self.cost, "cost"),
                self.flags,
                len(self.covered),
            )
            + _prefixes(self.covered, "covered")
            + struct.pack(">H", len(self.origin_announce))
            + self.origin_announce
        )


def decode_path_request(data: bytes) -> PathRequest:
    _need(data, _PREQ_FIXED.size, "path_request")
    origin_seq, dst_seq, cost, flags, n = _PREQ_FIXED.unpack_from(data)
    if flags & ~_PREQ_KNOWN_FLAGS:
        raise FrameDecodeError(f"unknown flags 0x{flags:02x}", field="flags")
    if n > MAX_NEIGHBOURS_LISTED:
        raise FrameDecodeError(f"more than {MAX_NEIGHBOURS_LISTED} covered", field="covered")
    pos = _PREQ_FIXED.size
    _need(data, pos + n * PREFIX_LEN + 2, "covered")
    covered = _split_prefixes(data[pos:], n)
    pos += n * PREFIX_LEN
    (ann_len,) = struct.unpack_from(">H", data, pos)
    pos += 2
    if len(data) != pos + ann_len:
        raise FrameDecodeError("origin_announce length mismatch", field="origin_announce")
    return PathRequest(origin_seq, dst_seq, cost, flags, covered, bytes(data[pos:]))


# --- PATH_REPLY -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathReply:
    """Unicast answer along the reverse path; carries the destination's signed announce."""

    cost: int  # wire units, accumulated from the destination up to the sender of this copy
    lifetime: int  # seconds the path may be used without refresh
    request_id: bytes
    announce: Announce

    def encode(self) -> bytes:
        if len(self.request_id) != FRAME_ID_LEN:
            raise FrameDecodeError("request_id is 8 bytes", field="request_id")
        head = _PREP_FIXED.pack(
            _u16(self.cost, "cost"), _u16(self.lifetime, "lifetime"), self.request_id
        )
        return head + self.announce.encode()


def decode_path_reply(data: bytes) -> PathReply:
    _need(data, _PREP_FIXED.size, "path_reply")
    cost, lifetime, request_id = _PREP_FIXED.unpack_from(data)
    return PathReply(cost, lifetime, bytes(request_id), decode_announce(data[_PREP_FIXED.size :]))


# --- PATH_ERROR -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathError:
    """Destinations the sender can no longer reach (AODV RERR), with their last seq."""

    unreachable: tuple[tuple[NodeAddress, int], ...]

    def encode(self) -> bytes:
        if not 1 <= len(self.unreachable) <= MAX_PATH_ERRORS:
            raise FrameDecodeError(f"1..{MAX_PATH_ERRORS} entries", field="unreachable")
        return bytes([len(self.unreachable)]) + b"".join(
            _PERR_ENTRY.pack(addr.raw, _u32(seq, "seq")) for addr, seq in self.unreachable
        )


def decode_path_error(data: bytes) -> PathError:
    _need(data, 1, "path_error")
    n = data[0]
    if not 1 <= n <= MAX_PATH_ERRORS:
        raise FrameDecodeError(f"1..{MAX_PATH_ERRORS} entries", field="unreachable")
    if len(data) != 1 + n * _PERR_ENTRY.size:
        raise FrameDecodeError("length does not match the entry count", field="unreachable")
    entries = []
    for i in range(n):
        raw, seq = _PERR_ENTRY.unpack_from(data, 1 + i * _PERR_ENTRY.size)
        entries.append((NodeAddress(bytes(raw)), seq))
    return PathError(tuple(entries))


# --- LINK_ACK (short header) -------------------------------------------------------


def encode_link_ack(acks: list[tuple[bytes, int]]) -> bytes:
    """``version, 0x40, count, count x (frame_id, attempt)``: acks for routed frames."""
    if not 1 <= len(acks) <= MAX_LINK_ACKS:
        raise FrameDecodeError(f"1..{MAX_LINK_ACKS} acks", field="acks")
    out = bytearray((WIRE_VERSION, int(FrameType.LINK_ACK), len(acks)))
    for frame_id, attempt in acks:
        if len(frame_id) != FRAME_ID_LEN:
            raise FrameDecodeError("frame_id is 8 bytes", field="frame_id")
        if not 0 <= attempt <= 255:
            raise FrameDecodeError("attempt out of range 0..255", field="attempt")
        out += _LACK_ENTRY.pack(frame_id, attempt)
    return bytes(out)


def decode_link_ack(data: bytes) -> list[tuple[bytes, int]]:
    _need(data, 3, "link_ack")
    if data[0] != WIRE_VERSION:
        raise FrameDecodeError(f"unsupported wire version {data[0]}", field="version")
    if data[1] != FrameType.LINK_ACK:
        raise FrameDecodeError("not a LINK_ACK", field="type")
    n = data[2]
    if not 1 <= n <= MAX_LINK_ACKS:
        raise FrameDecodeError(f"1..{MAX_LINK_ACKS} acks", field="acks")
    if len(data) != 3 + n * _LACK_ENTRY.size:
        raise FrameDecodeError("length does not match the ack count", field="acks")
    return [
        (bytes(fid), att)
        for fid, att in (_LACK_ENTRY.unpack_from(data, 3 + i * _LACK_ENTRY.size) for i in range(n))
    ]


assert ADDRESS_LEN == 16
