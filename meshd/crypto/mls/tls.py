"""A small TLS-presentation-language codec as profiled by RFC 9420 §2.1.

Structures are described once, as values built from the combinators below, and the same
description both decodes and encodes, so ``encode(decode(b)) == b`` holds by construction
for every canonical input. Vectors use RFC 9420's variable-length size prefix (§2.1.2:
the QUIC varint with the 8-byte form forbidden) and the minimum-length encoding is
required, which is what makes the round trip byte-exact.

Decoded values are plain Python data: ``int``, ``bytes``, ``list``, ``None`` and
``dict[str, object]`` for structs, so callers read fields by name.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from meshd.errors import WireError

# RFC 9420 §2.1.2: 2-bit prefix 0b00 -> 1 byte (6 bits), 0b01 -> 2 bytes, 0b10 -> 4 bytes;
# 0b11 is invalid in MLS.
_VARINT_MAX = (1 << 30) - 1


class Reader:
    """A cursor over bytes; every short read raises :class:`WireError` naming the field."""

    __slots__ = ("_data", "_end", "pos")

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None) -> None:
        self._data = data
        self.pos = pos
        self._end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        return self._end - self.pos

    def take(self, n: int, field: str) -> bytes:
        if n > self._end - self.pos:
            raise WireError(f"truncated: needs {n} bytes, has {self.remaining}", field=field)
        out = self._data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def varint(self, field: str) -> int:
        first = self.uint(1, field)
        prefix = first >> 6
        if prefix == 3:
            raise WireError("invalid variable-length size prefix 0b11", field=field)
        size = 1 << prefix
        value = first & 0x3F
        if size > 1:
            value = (value << (8 * (size - 1))) | self.uint(size - 1, field)
        if size > 1 and value < (1 << (8 * (size >> 1) - 2)):
            raise WireError("variable-length size not minimally encoded", field=field)
        return value

    def sub(self, field: str) -> Reader:
        """Read a ``<V>`` size prefix and return a reader bounded to that body."""
        n = self.varint(field)
        if n > self.remaining:
            raise WireError(f"vector of {n} bytes overruns its container", field=field)
        child = Reader(self._data, self.pos, self.pos + n)
        self.pos += n
        return child

    def expect_end(self, field: str) -> None:
        if self.pos != self._end:
            raise WireError(f"{self._end - self.pos} trailing bytes", field=field)


def encode_varint(n: int, field: str = "length") -> bytes:
    if n < 0 or n > _VARINT_MAX:
        raise WireError(f"vector length {n} out of range", field=field)
    if n < 1 << 6:
        return bytes([n])
    if n < 1 << 14:
        return (0x4000 | n).to_bytes(2, "big")
    return (0x8000_0000 | n).to_bytes(4, "big")


class Codec(abc.ABC):
    """Base of all combinators: ``decode`` from a reader, ``encode`` to a list of chunks."""

    @abc.abstractmethod
    def decode(self, r: Reader, field: str) -> Any: ...

    @abc.abstractmethod
    def encode(self, value: Any, out: list[bytes], field: str) -> None: ...

    def parse(self, data: bytes, field: str = "message") -> Any:
        """Decode a whole buffer; trailing bytes are an error."""
        r = Reader(data)
        value = self.decode(r, field)
        r.expect_end(field)
        return value

    def serialize(self, value: Any, field: str = "message") -> bytes:
        out: list[bytes] = []
        self.encode(value, out, field)
        return b"".join(out)


class UInt(Codec):
    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def decode(self, r: Reader, field: str) -> int:
        return r.uint(self.size, field)

    def encode(self, value: Any, out: list[bytes], field: str) -> None:
        if not isinstance(value, int) or not 0 <= value < 1 << (8 * self.size):
            raise WireError(f"not a uint{8 * self.size}: {value!r}", field=field)
        out.append(value.to_bytes(self.size, "big"))


class Opaque(Codec):
    """``opaque data<V>``."""

    def decode(self, r: Reader, field: str) -> bytes:
        n = r.varint(field)
        return r.take(n, field)

    def encode(self, value: Any, out: list[bytes], field: str) -> None:
        if not isinstance(value, bytes):
            raise WireError("expected bytes", field=field)
        out.append(encode_varint(len(value), field))
        out.append(value)


class Vector(Codec):
    """``T items<V>``: the prefix counts bytes, not items."""

    __slots__ = ("item",)

    def __init__(self, item: Codec) -> None:
        self.item = item

    def decode(self, r: Reader, field: str) -> list[Any]:
        body = r.sub(field)
        items: list[Any] = []
        while body.remaining:
            items.append(self.item.decode(body, f"{field}[{len(items)}]"))
        return items

    def encode(self, value: Any, out: list[bytes], field: str) -> None:
        if not isinstance(value, list):
            raise WireError("expected a list", field=field)
        inner: list[bytes] = []
        for i, item in enumerate(value):
            self.item.encode(item, inner, f"{field}[{i}]")
        body = b"".join(inner)
        out.append(encode_varint(len(body), field))
        out.append(body)


class Optional(Codec):
    """``optional<T>``: a presence byte 0 or 1 (RFC 9420 §2.1.3)."""

    __slots__ = ("item",)

    def __init__(self, item: Codec) -> None:
        self.item = item

    def decode(self, r: Reader, field: str) -> Any:
        flag = r.uint(1, field)
        if flag == 0:
            return None
        if flag != 1:
            raise WireError(f"optional presence byte {flag} is neither 0 nor 1", field=field)
        return self.item.decode(r, field)

    def encode(self, value: Any, out: list[bytes], field: str) -> None:
        if value is None:
            out.append(b"\x00")
        else:
            out.append(b"\x01")
            self.item.encode(value, out, field)


class Empty(Codec):
    """A ``struct {}`` arm of a select: nothing on the wire, ``None`` in Python."""

    def decode(self, r: Reader, field: str) -> None:
        return None

    def encode(self, value: Any, out: list[bytes], field: str) -> None:
        if value is not None:
            raise WireError("expected no value for an empty variant", field=field)


class Switch:
    """A ``select`` inside a struct: the arm is chosen from fields decoded before it."""

    __slots__ = ("arms", "key")

    def __init__(self, key: Callable[[Mapping[str, Any]], int], arms: Mapping[int, Codec]):
        self.key = key
        self.arms = arms

    def arm(self, partial: Mapping[str, Any], field: str) -> Codec:
        tag = self.key(partial)
        try:
            return self.arms[tag]
        except KeyError:
            raise WireError(f"unknown variant {tag}", field=field) from None


class Struct(Codec):
    """A sequence of named fields; a field's codec may be a :class:`Switch`."""

    __slots__ = ("fields", "name")

    def __init__(self, name: str, fields: Sequence[tuple[str, Codec | Switch]]) -> None:
        self.name = name
        self.fields = tuple(fields)

    def decode(self, r: Reader, field: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, codec in self.fields:
            path = f"{field}.{name}"
            if isinstance(codec, Switch):
                out[name] = codec.arm(out, path).decode(r, path)
            else:
                out[name] = codec.decode(r, path)
        return out

    def encode(self, value: Any, out: list[bytes], field: str) -> None:
        if not isinstance(value, dict):
            raise WireError(f"expected a {self.name} struct", field=field)
        for name, codec in self.fields:
            path = f"{field}.{name}"
            if name not in value:
                raise WireError("missing field", field=path)
            if isinstance(codec, Switch):
                codec.arm(value, path).encode(value[name], out, path)
            else:
                codec.encode(value[name], out, path)


U8 = UInt(1)
U16 = UInt(2)
U32 = UInt(4)
U64 = UInt(8)
OPAQUE = Opaque()
EMPTY = Empty()
