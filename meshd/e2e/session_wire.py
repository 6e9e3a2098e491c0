"""Payload kinds 0x10..0x1F: 1:1 MLS sessions, key packages, connection requests.

Every layout is in docs/wire-format.md ("1:1 sessions"), with hex vectors the tests parse
from the page. All integers are big-endian. Decoders raise ``FrameDecodeError`` naming the
field; nothing here touches MLS state (the bytes inside are opaque MLS messages).

The plaintext inside an MLS application message (``Sealed``) is meshd's, not the app's:
it carries the app-level message id (stable across a re-send after SESSION_RESET, so the
receiver delivers a message once) and the app envelope (``meshd.envelope``).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from meshd.envelope import Envelope, decode_envelope
from meshd.errors import FrameDecodeError, InvalidArgument

MESSAGE_ID_LEN = 8
MAX_GROUP_ID_LEN = 255
MAX_BLOB_LEN = 0xFFFF
#: Extension type of the announce extension carrying this node's MLS key package.
EXT_KEY_PACKAGE = 0x01


class Kind(enum.IntEnum):
    SESSION_APP = 0x10
    SESSION_INIT = 0x11
    KP_REQUEST = 0x12
    KP_RESPONSE = 0x13
    SESSION_RESET = 0x14
    CONN_ACCEPT = 0x15
    CONN_REJECT = 0x16
    CONN_CANCEL = 0x17


class InitFlags(enum.IntFlag):
    NONE = 0
    REQUEST = 0x01  # an explicit connection request (meshctl connect), not a first message


class ResetReason(enum.IntEnum):
    UNKNOWN_GROUP = 1  # a message for a group the receiver is not in
    KEY_PACKAGE_GONE = 2  # the Welcome's key package is used, expired or died in a restart
    WELCOME_REFUSED = 3  # any other reason the Welcome cannot be used


class RejectReason(enum.IntEnum):
    DECLINED = 1  # the user rejected it
    BUSY = 2  # the receiver's pending list is full
    EXPIRED = 3  # it waited too long


@dataclass(frozen=True, slots=True)
class SessionApp:
    """0x10: kind | MLS application message (to the end)."""

    message: bytes

    def encode(self) -> bytes:
        return bytes((Kind.SESSION_APP,)) + self.message


@dataclass(frozen=True, slots=True)
class SessionInit:
    """0x11: kind | flags u8 | gid_len u8 | group_id | welcome_len u16 | welcome | message.

    The Welcome travels with every message until the sender knows the peer joined, so
    the first message needs no round trip and a lost or reordered first frame costs
    nothing. ``message`` (may be empty) is an MLS application message in the group.
    """

    flags: InitFlags
    group_id: bytes
    welcome: bytes
    message: bytes

    def encode(self) -> bytes:
        _check(self.group_id, 1, MAX_GROUP_ID_LEN, "group_id")
        _check(self.welcome, 1, MAX_BLOB_LEN, "welcome")
        return (
            bytes((Kind.SESSION_INIT, int(self.flags), len(self.group_id)))
            + self.group_id
            + struct.pack(">H", len(self.welcome))
            + self.welcome
            + self.message
        )


@dataclass(frozen=True, slots=True)
class KpRequest:
    """0x12: kind | request_id (8). The receiver answers with a fresh key package."""

    request_id: bytes

    def encode(self) -> bytes:
        _check(self.request_id, MESSAGE_ID_LEN, MESSAGE_ID_LEN, "request_id")
        return bytes((Kind.KP_REQUEST,)) + self.request_id


@dataclass(frozen=True, slots=True)
class KpResponse:
    """0x13: kind | request_id (8) | key_package (MLSMessage, to the end)."""

    request_id: bytes
    key_package: bytes

    def encode(self) -> bytes:
        _check(self.request_id, MESSAGE_ID_LEN, MESSAGE_ID_LEN, "request_id")
        _check(self.key_package, 1, MAX_BLOB_LEN, "key_package")
        return bytes((Kind.KP_RESPONSE,)) + self.request_id + self.key_package


@dataclass(frozen=True, slots=True)
class SessionReset:
    """0x14: kind | reason u8 | gid_len u8 | group_id | key_package (to the end).

    The receiver cannot use the group: the sender drops it, builds a new one from the
    fresh key package and re-sends what it had sealed in the old one.
    """

    reason: ResetReason
    group_id: bytes
    key_package: bytes

    def encode(self) -> bytes:
        _check(self.group_id, 1, MAX_GROUP_ID_LEN, "group_id")
        _check(self.key_package, 1, MAX_BLOB_LEN, "key_package")
        return (
            bytes((Kind.SESSION_RESET, int(self.reason), len(self.group_id)))
            + self.group_id
            + self.key_package
        )


@dataclass(frozen=True, slots=True)
class ConnAccept:
    """0x15: kind | gid_len u8 | group_id | MLS application message (to the end).

    The message (plaintext: an empty ``Sealed`` control record) proves the accepter
    joined the group; the requester then treats the session as established.
    """

    group_id: bytes
    message: bytes

    def encode(self) -> bytes:
        _check(self.group_id, 1, MAX_GROUP_ID_LEN, "group_id")
        _check(self.message, 1, MAX_BLOB_LEN, "message")
        return bytes((Kind.CONN_ACCEPT, len(self.group_id))) + self.group_id + self.message


@dataclass(frozen=True, slots=True)
class ConnReject:
    """0x16: kind | reason u8 | gid_len u8 | group_id."""

    reason: RejectReason
    group_id: bytes

    def encode(self) -> bytes:
        _check(self.group_id, 1, MAX_GROUP_ID_LEN, "group_id")
        return bytes((Kind.CONN_REJECT, int(self.reason), len(self.group_id))) + self.group_id


@dataclass(frozen=True, slots=True)
class ConnCancel:
    """0x17: kind | gid_len u8 | group_id. The requester withdraws its request."""

    group_id: bytes

    def encode(self) -> bytes:
        _check(self.group_id, 1, MAX_GROUP_ID_LEN, "group_id")
        return bytes((Kind.CONN_CANCEL, len(self.group_id))) + self.group_id


SessionFrame = (
    SessionApp
    | SessionInit
    | KpRequest
    | KpResponse
    | SessionReset
    | ConnAccept
    | ConnReject
    | ConnCancel
)


def decode(data: bytes) -> SessionFrame:
    """Decode a 0x10..0x1F payload; FrameDecodeError naming the field when malformed."""
    if not data:
        raise FrameDecodeError("empty session payload", field="kind")
    try:
        kind = Kind(data[0])
    except ValueError:
        msg = f"unknown session payload kind {data[0]:#04x}"
        raise FrameDecodeError(msg, field="kind") from None
    r = _Reader(data, 1)
    if kind is Kind.SESSION_APP:
        return SessionApp(r.rest("message", minimum=1))
    if kind is Kind.SESSION_INIT:
        flags = r.u8("flags")
        if flags & ~int(InitFlags.REQUEST):
            raise FrameDecodeError(f"unknown init flags {flags:#04x}", field="flags")
        group_id = r.blob8("group_id")
        welcome = r.blob16("welcome")
        return SessionInit(InitFlags(flags), group_id, welcome, r.rest("message", minimum=0))
    if kind is Kind.KP_REQUEST:
        request_id = r.take(MESSAGE_ID_LEN, "request_id")
        r.end()
        return KpRequest(request_id)
    if kind is Kind.KP_RESPONSE:
        request_id = r.take(MESSAGE_ID_LEN, "request_id")
        return KpResponse(request_id, r.rest("key_package", minimum=1))
    if kind is Kind.SESSION_RESET:
        reason = r.u8("reason")
        try:
            why = ResetReason(reason)
        except ValueError:
            raise FrameDecodeError(f"unknown reset reason {reason}", field="reason") from None
        group_id = r.blob8("group_id")
        return SessionReset(why, group_id, r.rest("key_package", minimum=1))
    if kind is Kind.CONN_ACCEPT:
        group_id = r.blob8("group_id")
        return ConnAccept(group_id, r.rest("message", minimum=1))
    if kind is Kind.CONN_REJECT:
        reason = r.u8("reason")
        try:
            rej = RejectReason(reason)
        except ValueError:
            raise FrameDecodeError(f"unknown reject reason {reason}", field="reason") from None
        group_id = r.blob8("group_id")
        r.end()
        return ConnReject(rej, group_id)
    group_id = r.blob8("group_id")
    r.end()
    return ConnCancel(group_id)


# --- the plaintext inside an MLS application message --------------------------------

SEALED_VERSION = 1


class SealedType(enum.IntEnum):
    APP = 1  # an app message: message_id (8) | app envelope
    CONTROL = 2  # no app content (CONN_ACCEPT's proof of membership)


@dataclass(frozen=True, slots=True)
class Sealed:
    """version u8 = 1 | type u8 | message_id (8) | app envelope (type APP only)."""

    type: SealedType
    message_id: bytes
    envelope: Envelope | None

    def encode(self) -> bytes:
        _check(self.message_id, MESSAGE_ID_LEN, MESSAGE_ID_LEN, "message_id")
        head = bytes((SEALED_VERSION, int(self.type))) + self.message_id
        if self.type is SealedType.APP:
            if self.envelope is None:
                raise InvalidArgument("an APP record needs an envelope", field="envelope")
            return head + self.envelope.encode()
        return head


def decode_sealed(data: bytes) -> Sealed:
    r = _Reader(data, 0)
    version = r.u8("version")
    if version != SEALED_VERSION:
        raise FrameDecodeError(f"unsupported sealed record version {version}", field="version")
    raw_type = r.u8("type")
    try:
        kind = SealedType(raw_type)
    except ValueError:
        raise FrameDecodeError(f"unknown sealed record type {raw_type}", field="type") from None
    message_id = r.take(MESSAGE_ID_LEN, "message_id")
    if kind is SealedType.CONTROL:
        r.end()
        return Sealed(kind, message_id, None)
    return Sealed(kind, message_id, decode_envelope(r.rest("envelope", minimum=2)))


# --- announce extensions -------------------------------------------------------------


def encode_extensions(items: dict[int, bytes]) -> bytes:
    """TLVs: type u8 | len u16 | value, in type order (other layers may add types)."""
    out = bytearray()
    for ext_type in sorted(items):
        value = items[ext_type]
        _check(value, 0, MAX_BLOB_LEN, "extension")
        out += struct.pack(">BH", ext_type, len(value)) + value
    return bytes(out)


def decode_extensions(data: bytes) -> dict[int, bytes]:
    """Parse announce extension TLVs; unknown types are kept (and ignored by callers)."""
    r = _Reader(data, 0)
    items: dict[int, bytes] = {}
    while r.pos < len(data):
        ext_type = r.u8("extension.type")
        items[ext_type] = r.blob16("extension.value")
    return items


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int, field: str) -> bytes:
        if self.pos + n > len(self.data):
            raise FrameDecodeError(f"truncated {field}", field=field)
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def blob8(self, field: str) -> bytes:
        n = self.u8(field)
        if n == 0:
            raise FrameDecodeError(f"empty {field}", field=field)
        return self.take(n, field)

    def blob16(self, field: str) -> bytes:
        (n,) = struct.unpack(">H", self.take(2, field))
        return self.take(n, field)

    def rest(self, field: str, *, minimum: int) -> bytes:
        out = bytes(self.data[self.pos :])
        if len(out) < minimum:
            raise FrameDecodeError(f"missing {field}", field=field)
        self.pos = len(self.data)
        return out

    def end(self) -> None:
        if self.pos != len(self.data):
            raise FrameDecodeError(
                f"{len(self.data) - self.pos} trailing bytes", field="trailing"
            )


def _check(value: bytes, lo: int, hi: int, field: str) -> None:
    if not lo <= len(value) <= hi:
        raise InvalidArgument(f"{field} must be {lo}..{hi} bytes, got {len(value)}", field=field)
