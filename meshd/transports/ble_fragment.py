"""MTU-aware fragmentation and reassembly of link records for BLE (sans-IO).

A *message* here is one whole link record (``meshd.transports.framing``: a handshake
message or an AEAD-sealed channel record); BLE carries at most ``ATT_MTU - 3`` bytes per
GATT value, so a message is cut into fragments. Fragment layout::

    0  flags   u8   bit 7 FIRST, bit 6 LAST, bits 0-5 fragment index mod 64
    1  msg_id  u8   message counter of the sender, mod 256
    2  total   LEB128 varint, FIRST-but-not-LAST fragments only: the message length
    .. payload

Overhead: 2 bytes per fragment, 2-5 on the first fragment of a multi-fragment message
(the varint of a 64 KiB record is 3 bytes); the BLE pipe adds one session byte
(``ble_session``), so at most 6 bytes per fragment, against the reference's 46.

Reassembly keeps one partial message per stream key (a BLE pipe is ordered, one sender
per key), bounded in count and bytes, and forgets partials older than ``timeout``. A
fragment that does not continue the partial (other id or index), a LAST fragment whose
message is not exactly ``total`` bytes, or a malformed header raises ``FrameDecodeError``
and drops the partial. An exact repeat of the previous fragment is ignored. A wrong
message could only be assembled if 256 whole messages in a row were lost *and* the
lengths matched by chance; the AEAD channel above rejects such a record anyway.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

from meshd.errors import FrameDecodeError, WireError

FIRST = 0x80
LAST = 0x40
INDEX_MASK = 0x3F
HEADER_LEN = 2
MAX_VARINT_LEN = 3  # 21 bits: more than any record (64 KiB + 46 + 20)
MAX_MESSAGE = (1 << 21) - 1
MIN_FRAGMENT = HEADER_LEN + MAX_VARINT_LEN + 1  # room for a header and one payload byte


def encode_varint(value: int) -> bytes:
    """LEB128 (7 bits per byte, low group first), at most ``MAX_VARINT_LEN`` bytes."""
    if not 0 <= value <= MAX_MESSAGE:
        raise WireError(f"length {value} out of range", field="fragment.total")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it); ``FrameDecodeError`` if truncated or too long."""
    value = 0
    for i in range(MAX_VARINT_LEN):
        if pos + i >= len(data):
            raise FrameDecodeError("truncated length varint", field="fragment.total")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if i and byte == 0:
                raise FrameDecodeError("non-minimal length varint", field="fragment.total")
            return value, pos + i + 1
    raise FrameDecodeError("length varint longer than 3 bytes", field="fragment.total")


def fragment(message: bytes, msg_id: int, max_fragment: int) -> list[bytes]:
    """Cut ``message`` into fragments of at most ``max_fragment`` bytes each."""
    if max_fragment < MIN_FRAGMENT:
        raise WireError(f"fragment size {max_fragment} below {MIN_FRAGMENT}", field="mtu")
    if len(message) > MAX_MESSAGE:
        raise WireError(f"message of {len(message)} bytes too long", field="fragment.total")
    msg_id &= 0xFF
    room = max_fragment - HEADER_LEN
    if len(message) <= room:
        return [bytes((FIRST | LAST, msg_id)) + message]
    total = encode_varint(len(message))
    first_room = room - len(total)
    out = [bytes((FIRST, msg_id)) + total + message[:first_room]]
    pos, index = first_room, 1
    while pos < len(message):
        chunk = message[pos : pos + room]
        pos += len(chunk)
        flags = (LAST if pos >= len(message) else 0) | (index & INDEX_MASK)
        out.append(bytes((flags, msg_id)) + chunk)
        index += 1
    return out


def overhead(message_len: int, max_fragment: int) -> int:
    """Bytes the fragment headers add to one message of ``message_len`` bytes."""
    return sum(len(f) for f in fragment(bytes(message_len), 0, max_fragment)) - message_len


class Fragmenter:
    """Numbers outgoing messages and cuts them for one pipe direction."""

    __slots__ = ("_next_id",)

    def __init__(self) -> None:
        self._next_id = 0

    def fragments(self, message: bytes, max_fragment: int) -> list[bytes]:
        out = fragment(message, self._next_id, max_fragment)
        self._next_id = (self._next_id + 1) & 0xFF
        return out


@dataclass(slots=True)
class _Partial:
    msg_id: int
    total: int
    next_index: int
    started: float
    buf: bytearray
    last: bytes  # the previous fragment, to ignore an exact repeat


class Reassembler:
    """Joins fragments back into messages, one partial per stream key, bounded."""

    def __init__(
        self,
        *,
        max_message: int = 70_000,
        max_partials: int = 64,
        max_bytes: int = 1 << 20,
        timeout: float = 30.0,
    ) -> None:
        if not 0 < max_message <= MAX_MESSAGE or max_bytes < max_message or max_partials < 1:
            raise WireError("reassembly bounds out of range", field="reassembler")
        self._max_message = max_message
        self._max_partials = max_partials
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._partials: OrderedDict[Hashable, _Partial] = OrderedDict()
        self._reserved = 0  # sum of ``total`` over partials: what they may grow to
        self._last_done: dict[Hashable, bytes] = {}
        self.evicted = 0  # partials dropped to stay in bounds or for age

    @property
    def partials(self) -> int:
        return len(self._partials)

    @property
    def reserved_bytes(self) -> int:
        return self._reserved

    def feed(self, key: Hashable, data: bytes, *, now: float) -> bytes | None:
        """Add one fragment of stream ``key``; the whole message once it is complete."""
        if len(data) < HEADER_LEN:
            self._drop(key)
            raise FrameDecodeError(f"fragment of {len(data)} bytes", field="fragment")
        flags, msg_id = data[0], data[1]
        partial = self._partials.get(key)
        if partial is not None and data == partial.last:
            return None  # a duplicated fragment
        if flags & FIRST:
            self._drop(key)
            if data == self._last_done.get(key):
                return None  # the last fragment of the message just completed, again
            if flags & INDEX_MASK:
                raise FrameDecodeError("first fragment with a nonzero index", field="fragment")
            if flags & LAST:
                return self._done(key, data, bytes(data[HEADER_LEN:]))
            total, pos = decode_varint(data, HEADER_LEN)
            self._start(key, msg_id, total, data, pos, now)
            return None
        if partial is None:
            if data == self._last_done.get(key):
                return None
            raise FrameDecodeError("continuation without a first fragment", field="fragment")
        if msg_id != partial.msg_id or (flags & INDEX_MASK) != partial.next_index:
            self._drop(key)
            raise FrameDecodeError("fragment out of sequence (lost fragment)", field="fragment")
        partial.buf += memoryview(data)[HEADER_LEN:]
        partial.next_index = (partial.next_index + 1) & INDEX_MASK
        partial.last = bytes(data)
        if len(partial.buf) > partial.total:
            self._drop(key)
            raise FrameDecodeError("fragments exceed the message length", field="fragment.total")
        if flags & LAST:
            self._drop(key)
            if len(partial.buf) != partial.total:
                raise FrameDecodeError(
                    f"message of {len(partial.buf)} bytes, header said {partial.total}",
                    field="fragment.total",
                )
            return self._done(key, data, bytes(partial.buf))
        return None

    def expire(self, *, now: float) -> int:
        """Drop partials older than the timeout; how many were dropped."""
        old = [k for k, p in self._partials.items() if now - p.started > self._timeout]
        for key in old:
            self._drop(key)
        self.evicted += len(old)
        return len(old)

    def forget(self, key: Hashable) -> None:
        """The stream ended: drop its partial and memory."""
        self._drop(key)
        self._last_done.pop(key, None)

    def keys(self) -> Iterator[Hashable]:
        return iter(self._partials)

    # --- internals --------------------------------------------------------------------
    def _done(self, key: Hashable, data: bytes, message: bytes) -> bytes:
        if len(message) > self._max_message:
            raise FrameDecodeError(f"message of {len(message)} bytes too long", field="fragment")
        self._last_done[key] = bytes(data)
        if len(self._last_done) > 4 * self._max_partials:  # keys are sessions: bounded too
            self._last_done.pop(next(iter(self._last_done)))
        return message

    def _start(
        self, key: Hashable, msg_id: int, total: int, data: bytes, pos: int, now: float
    ) -> None:
        first = bytes(data[pos:])
        if total > self._max_message:
            raise FrameDecodeError(
                f"message of {total} bytes exceeds {self._max_message}", field="fragment.total"
            )
        if len(first) >= total:  # a single fragment would have had FIRST|LAST
            raise FrameDecodeError("first fragment holds the whole message", field="fragment")
        while self._partials and (
            len(self._partials) >= self._max_partials or self._reserved + total > self._max_bytes
        ):
            oldest = next(iter(self._partials))
            self._drop(oldest)
            self.evicted += 1
        self._partials[key] = _Partial(msg_id, total, 1, now, bytearray(first), bytes(data))
        self._reserved += total

    def _drop(self, key: Hashable) -> None:
        partial = self._partials.pop(key, None)
        if partial is not None:
            self._reserved -= partial.total
