"""Length-prefixed records on a byte stream (TCP today; the same records ride BLE/WiFi).

Record layout (big-endian)::

    0  type    u8    RecordType
    1  length  u24   body length, at most the decoder's bound
    4  body    ``length`` bytes: a Noise handshake message (HANDSHAKE, clear) or an
                     AEAD ciphertext (everything else) whose associated data is the
                     4-byte header, so type and length cannot be altered in flight.

The decoder is bounded: a length over the bound is a ``WireError`` before any body is
buffered, so a peer cannot make us allocate more than one maximal record.
"""

from __future__ import annotations

import enum
import struct

from meshd.errors import WireError
from meshd.router.frames import MAX_FRAME_LEN

HEADER_LEN = 4
TAG_LEN = 16
MAX_LENGTH = 0xFFFFFF
# A whole mesh frame plus its AEAD tag: one record per frame, one AEAD op per frame.
MAX_RECORD_BODY = MAX_FRAME_LEN + TAG_LEN
_HEADER = struct.Struct(">I")


class RecordType(enum.IntEnum):
    HANDSHAKE = 0x01  # Noise handshake message, in clear (Noise encrypts inside it)
    DATA = 0x02  # one whole mesh frame
    PING = 0x03  # keepalive; the peer answers PONG with the same body
    PONG = 0x04
    CLOSE = 0x05  # orderly close; body is one reason byte


_KNOWN_TYPES = frozenset(int(t) for t in RecordType)


def encode_header(record_type: int, length: int) -> bytes:
    if not 0 <= length <= MAX_LENGTH:
        raise WireError(f"record length {length} out of range", field="record.length")
    return _HEADER.pack((record_type << 24) | length)


def encode_record(record_type: int, body: bytes) -> bytes:
    return encode_header(record_type, len(body)) + body


class RecordDecoder:
    """Incremental decoder: feed it what ``data_received`` got, get whole records back."""

    __slots__ = ("_buf", "_max_body", "_need")

    def __init__(self, max_body: int = MAX_RECORD_BODY) -> None:
        if not 0 < max_body <= MAX_LENGTH:
            raise WireError("record bound out of range", field="max_body")
        self._buf = bytearray()
        self._max_body = max_body
        self._need = 0  # bytes the buffered partial record needs in total (0: unknown)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, bytes, bytes]]:
        """Return ``(type, header, body)`` for every complete record now buffered."""
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return []  # still inside one big record: do not re-copy what we have
            src = bytes(self._buf)  # one copy, only when a record straddled two reads
        else:
            src = data  # common case: slice records straight out of the read (no buffer)
        self._need = 0
        out: list[tuple[int, bytes, bytes]] = []
        pos = 0
        end = len(src)
        max_body = self._max_body
        while end - pos >= HEADER_LEN:
            (word,) = _HEADER.unpack_from(src, pos)
            rtype = word >> 24
            length = word & MAX_LENGTH
            if rtype not in _KNOWN_TYPES:
                raise WireError(f"unknown record type 0x{rtype:02x}", field="record.type")
            if length > max_body:
                raise WireError(
                    f"record of {length} bytes exceeds the bound of {max_body}",
                    field="record.length",
                )
            body_at = pos + HEADER_LEN
            stop = body_at + length
            if stop > end:
                self._need = stop - pos
                break
            out.append((rtype, src[pos:body_at], src[body_at:stop]))
            pos = stop
        self._buf = bytearray(src[pos:]) if pos < end else bytearray()
        return out
