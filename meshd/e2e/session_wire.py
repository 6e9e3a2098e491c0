"""Payload kinds 0x10..0x1F: 1:1 MLS sessions, key packages, connection requests.

Every layout is in docs/wire-format.md ("1:1 sessions"), with hex vectors the tests parse
from the page. All integers are big-endian. Decoders raise ``FrameDecodeError`` naming the
field; nothing here touches MLS state (the bytes inside are opaque MLS messages).

Control payloads that carry no MLS authentication of their own (KP_REQUEST, KP_RESPONSE,
SESSION_RESET, CONN_REJECT, CONN_CANCEL, CONN_HELD) end with ``signer (32) · signature (64)``: the
sender's Ed25519 node key and its signature over a context label, the source and
destination addresses and the payload before the trailer (``control_signed_bytes``). The
receiver checks the key hashes to the source address (and is the TOFU-pinned one), so a
relay or any other node cannot forge or redirect them.

The plaintext inside an MLS application message (``Sealed``) is meshd's, not the app's:
it carries the app-level message id (stable across a re-send after SESSION_RESET, so the
receiver delivers a message once) and the app envelope (``meshd.envelope``).
"""

from __future__ import annotations

import enum
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity, verify_signature
from meshd.envelope import Envelope, decode_envelope
from meshd.errors import FrameDecodeError, InvalidArgument

MESSAGE_ID_LEN = 8
MAX_GROUP_ID_LEN = 255
MAX_BLOB_LEN = 0xFFFF
#: Extension type of the announce extension carrying this node's MLS key package.
EXT_KEY_PACKAGE = 0x01
#: signer key (32) + Ed25519 signature (64) ending every signed control payload.
SIGNER_LEN, SIGNATURE_LEN = 32, 64
AUTH_LEN = SIGNER_LEN + SIGNATURE_LEN
#: Domain separation of the control signatures (never valid as any other meshd signature).
CONTROL_CONTEXT = b"meshd session control v1\x00"


class Kind(enum.IntEnum):
    SESSION_APP = 0x10
    SESSION_INIT = 0x11
    KP_REQUEST = 0x12
    KP_RESPONSE = 0x13
    SESSION_RESET = 0x14
    CONN_ACCEPT = 0x15
    CONN_REJECT = 0x16
    CONN_CANCEL = 0x17
    SESSION_COMMIT = 0x18
    CONN_HELD = 0x19


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


class _SignedControl(ABC):
    """A control payload whose encoding is ``body()`` followed by the signature trailer."""

    __slots__ = ()
    auth: bytes

    @abstractmethod
    def body(self) -> bytes:
        """The payload without the signature trailer (what the signature covers)."""

    def encode(self) -> bytes:
        _check(self.auth, AUTH_LEN, AUTH_LEN, "auth")
        return self.body() + self.auth


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
class KpRequest(_SignedControl):
    """0x12: kind | request_id (8) | auth. The receiver answers with a fresh key package."""

    request_id: bytes
    auth: bytes = b""  # signer key · signature (AUTH_LEN), see control_signed_bytes

    def body(self) -> bytes:
        """The payload without the signature trailer (what the signature covers)."""
        _check(self.request_id, MESSAGE_ID_LEN, MESSAGE_ID_LEN, "request_id")
        return bytes((Kind.KP_REQUEST,)) + self.request_id


@dataclass(frozen=True, slots=True)
class KpResponse(_SignedControl):
    """0x13: kind | request_id (8) | key_package (MLSMessage) | auth (last 96 bytes)."""

    request_id: bytes
    key_package: bytes
    auth: bytes = b""  # signer key · signature (AUTH_LEN), see control_signed_bytes

    def body(self) -> bytes:
        """The payload without the signature trailer (what the signature covers)."""
        _check(self.request_id, MESSAGE_ID_LEN, MESSAGE_ID_LEN, "request_id")
        _check(self.key_package, 1, MAX_BLOB_LEN, "key_package")
        return bytes((Kind.KP_RESPONSE,)) + self.request_id + self.key_package


@dataclass(frozen=True, slots=True)
class SessionReset(_SignedControl):
    """0x14: kind | reason u8 | gid_len u8 | group_id | key_package | auth (last 96).

    The receiver cannot use the group: the sender drops it, builds a new one from the
    fresh key package and re-sends what it had sealed in the old one.
    """

    reason: ResetReason
    group_id: bytes
    key_package: bytes
    auth: bytes = b""  # signer key · signature (AUTH_LEN), see control_signed_bytes

    def body(self) -> bytes:
        """The payload without the signature trailer (what the signature covers)."""
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
class ConnReject(_SignedControl):
    """0x16: kind | reason u8 | gid_len u8 | group_id | auth."""

    reason: RejectReason
    group_id: bytes
    auth: bytes = b""  # signer key · signature (AUTH_LEN), see control_signed_bytes

    def body(self) -> bytes:
        """The payload without the signature trailer (what the signature covers)."""
        _check(self.group_id, 1, MAX_GROUP_ID_LEN, "group_id")
        return bytes((Kind.CONN_REJECT, int(self.reason), len(self.group_id))) + self.group_id


@dataclass(frozen=True, slots=True)
class ConnCancel(_SignedControl):
    """0x17: kind | gid_len u8 | group_id | auth. The requester withdraws its request."""

    group_id: bytes
    auth: bytes = b""  # signer key · signature (AUTH_LEN), see control_signed_bytes

    def body(self) -> bytes:
        """The payload without the signature trailer (what the signature covers)."""
        _check(self.group_id, 1, MAX_GROUP_ID_LEN, "group_id")
        return bytes((Kind.CONN_CANCEL, len(self.group_id))) + self.group_id


@dataclass(frozen=True, slots=True)
class ConnHeld(_SignedControl):
    """0x19: kind | gid_len u8 | group_id | auth. The receiver holds what the sender sent
    in that group, unopened, as an incoming connection request (its policy is contacts
    only): delivered to the node, not to an app, until it accepts."""

    group_id: bytes
    auth: bytes = b""  # signer key · signature (AUTH_LEN), see control_signed_bytes

    def body(self) -> bytes:
        """The payload without the signature trailer (what the signature covers)."""
        _check(self.group_id, 1, MAX_GROUP_ID_LEN, "group_id")
        return bytes((Kind.CONN_HELD, len(self.group_id))) + self.group_id


@dataclass(frozen=True, slots=True)
class SessionCommit:
    """0x18: kind | commit_len u16 | commit | MLS application message (to the end, may be
    empty).

    A self-update commit of the sender (post-compromise security). Like the Welcome in
    SESSION_INIT it travels with every message the sender seals in the new epoch until the
    peer proves it is there, so a lost or reordered commit frame costs nothing.
    """

    commit: bytes
    message: bytes

    def encode(self) -> bytes:
        _check(self.commit, 1, MAX_BLOB_LEN, "commit")
        return (
            bytes((Kind.SESSION_COMMIT,)) + struct.pack(">H", len(self.commit)) + self.commit
            + self.message
        )  # fmt: skip


SessionFrame = (
    SessionApp
    | SessionInit
    | KpRequest
    | KpResponse
    | SessionReset
    | ConnAccept
    | ConnReject
    | ConnCancel
    | SessionCommit
    | ConnHeld
)
#: Kinds whose payload ends with the sender's node-key signature.
SIGNED_KINDS = frozenset(
    {Kind.KP_REQUEST, Kind.KP_RESPONSE, Kind.SESSION_RESET, Kind.CONN_REJECT, Kind.CONN_CANCEL,
     Kind.CONN_HELD}
)  # fmt: skip


def control_signed_bytes(src: NodeAddress, dst: NodeAddress, body: bytes) -> bytes:
    """What a control signature covers: context · src (16) · dst (16) · body. The
    addresses bind it to one sender and one receiver (no reflection to a third node)."""
    return CONTROL_CONTEXT + src.raw + dst.raw + body


SignedFrame = KpRequest | KpResponse | SessionReset | ConnReject | ConnCancel | ConnHeld


def sign_control(frame: SignedFrame, identity: Identity, dst: NodeAddress) -> bytes:
    """``frame`` as a payload from ``identity`` to ``dst``, signature trailer appended."""
    body = frame.body()
    signature = identity.sign(control_signed_bytes(identity.address, dst, body))
    return body + identity.public.signing_key + signature


def control_forgery(
    payload: bytes, src: NodeAddress, dst: NodeAddress, pinned_key: bytes | None
) -> str | None:
    """Why a signed control ``payload`` (decoded fine) is not ``src``'s, or None if it is."""
    auth = payload[-AUTH_LEN:]
    signer, signature = auth[:SIGNER_LEN], auth[SIGNER_LEN:]
    if NodeAddress.from_public_key(signer) != src:
        return "signed by a key that is not the source's"
    if pinned_key is not None and pinned_key != signer:
        return "signed by a key that is not the pinned one"
    if not verify_signature(signer, signature, control_signed_bytes(src, dst, payload[:-AUTH_LEN])):
        return "bad signature"
    return None


def decode(data: bytes) -> SessionFrame:
    """Decode a 0x10..0x1F payload; FrameDecodeError naming the field when malformed."""
    if not data:
        raise FrameDecodeError("empty session payload", field="kind")
    try:
        kind = Kind(data[0])
    except ValueError:
        msg = f"unknown session payload kind {data[0]:#04x}"
        raise FrameDecodeError(msg, field="kind") from None
    auth = b""
    if kind in SIGNED_KINDS:
        if len(data) < 1 + AUTH_LEN:
            raise FrameDecodeError("missing signature", field="auth")
        data, auth = data[:-AUTH_LEN], bytes(data[-AUTH_LEN:])
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
        return KpRequest(request_id, auth)
    if kind is Kind.KP_RESPONSE:
        request_id = r.take(MESSAGE_ID_LEN, "request_id")
        return KpResponse(request_id, r.rest("key_package", minimum=1), auth)
    if kind is Kind.SESSION_RESET:
        reason = r.u8("reason")
        try:
            why = ResetReason(reason)
        except ValueError:
            raise FrameDecodeError(f"unknown reset reason {reason}", field="reason") from None
        group_id = r.blob8("group_id")
        return SessionReset(why, group_id, r.rest("key_package", minimum=1), auth)
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
        return ConnReject(rej, group_id, auth)
    if kind is Kind.SESSION_COMMIT:
        commit = r.blob16("commit")
        if not commit:
            raise FrameDecodeError("empty commit", field="commit")
        return SessionCommit(commit, r.rest("message", minimum=0))
    if kind is Kind.CONN_HELD:
        group_id = r.blob8("group_id")
        r.end()
        return ConnHeld(group_id, auth)
    group_id = r.blob8("group_id")
    r.end()
    return ConnCancel(group_id, auth)


# --- the plaintext inside an MLS application message --------------------------------

SEALED_VERSION = 1


class SealedType(enum.IntEnum):
    APP = 1  # an app message: message_id (8) | app envelope
    CONTROL = 2  # no app content (CONN_ACCEPT's proof of membership)
    BATCH = 3  # 2..255 app messages coalesced into one MLS message (encode_batch)


#: Records in one BATCH (count is a u8); the sender bounds it further (meshd/e2e/coalesce.py).
MAX_BATCH = 255


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
    if kind is SealedType.BATCH:
        raise FrameDecodeError("a BATCH holds several records: decode_sealed_records",
                               field="type")  # fmt: skip
    message_id = r.take(MESSAGE_ID_LEN, "message_id")
    if kind is SealedType.CONTROL:
        r.end()
        return Sealed(kind, message_id, None)
    return Sealed(kind, message_id, decode_envelope(r.rest("envelope", minimum=2)))


def encode_batch(records: list[tuple[bytes, Envelope]]) -> bytes:
    """version u8 = 1 | type u8 = 3 | count u8 (2..255) | count x (message_id (8) |
    length u16 | app envelope): one MLS message (one signature, one AEAD) for several
    app messages, each keeping its own message id (the receiver's dedup key)."""
    if not 2 <= len(records) <= MAX_BATCH:
        raise InvalidArgument(f"a batch holds 2..{MAX_BATCH} records, got {len(records)}",
                              field="records")  # fmt: skip
    out = [bytes((SEALED_VERSION, int(SealedType.BATCH), len(records)))]
    for message_id, envelope in records:
        _check(message_id, MESSAGE_ID_LEN, MESSAGE_ID_LEN, "message_id")
        body = envelope.encode()
        _check(body, 2, MAX_BLOB_LEN, "envelope")
        out.append(message_id + struct.pack(">H", len(body)) + body)
    return b"".join(out)


def decode_sealed_records(data: bytes) -> list[Sealed]:
    """The records of a sealed plaintext: one for APP/CONTROL, 2..255 APP for a BATCH."""
    if len(data) < 2 or data[0] != SEALED_VERSION or data[1] != SealedType.BATCH:
        return [decode_sealed(data)]
    r = _Reader(data, 2)
    count = r.u8("count")
    if count < 2:
        raise FrameDecodeError(f"a batch holds 2..{MAX_BATCH} records, got {count}",
                               field="count")  # fmt: skip
    out: list[Sealed] = []
    for _ in range(count):
        message_id = r.take(MESSAGE_ID_LEN, "message_id")
        out.append(Sealed(SealedType.APP, message_id, decode_envelope(r.blob16("envelope"))))
    r.end()
    return out


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
