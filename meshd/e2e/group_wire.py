"""Wire layouts of the group payloads (kinds 0x20..0x2F, see docs/wire-format.md).

Every payload starts with its kind byte. Integers are big-endian. Decoders raise
``FrameDecodeError`` naming the field; they never trust a length they have not checked
against what is left of the buffer.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

from meshd.address import ADDRESS_LEN, NodeAddress
from meshd.crypto.identity import KEY_LEN, SIGNATURE_LEN, Identity, verify_signature
from meshd.errors import FrameDecodeError

KIND_DATA = 0x20
KIND_COMMIT = 0x21
KIND_WELCOME = 0x22
KIND_CATCHUP_REQUEST = 0x23
KIND_CATCHUP_RESPONSE = 0x24
KIND_LEAVE = 0x25
KIND_FRAGMENT = 0x2F

TIP_LEN = 8  # truncated commit id carried in DATA: enough to notice a fork, not to forge one
COMMIT_ID_LEN = 32
FRAG_ID_LEN = 8
MAX_GROUP_ID = 255
MAX_NAME = 255
MAX_TARGETS = 4096
MAX_CATCHUP_ENTRIES = 256
MAX_FRAGMENTS = 64

_COMMIT_CONTEXT = b"meshd/group-commit/v1\x00"
_WELCOME_CONTEXT = b"meshd/group-welcome/v1\x00"
_LEAVE_CONTEXT = b"meshd/group-leave/v1\x00"
_FRAG_HEAD = struct.Struct(">B8sHH")


class Role(enum.IntEnum):
    MEMBER = 0
    ADMIN = 1


class Action(enum.IntEnum):
    """What a commit does; receivers check the MLS effect matches (rosters diff)."""

    UPDATE = 0  # a fresh leaf key only (any member)
    ADD = 1  # admins only
    REMOVE = 2  # admins only
    ROLE = 3  # role changes of existing members, carried on an empty commit (admins only)


def commit_id(mls_commit: bytes) -> bytes:
    """The id of a commit: SHA-256 of its MLSMessage bytes (also the fork tie-breaker)."""
    return hashlib.sha256(mls_commit).digest()


def message_id(ciphertext: bytes) -> bytes:
    """The id every member records for a group message: SHA-256 of the ciphertext, 16 B."""
    return hashlib.sha256(ciphertext).digest()[:16]


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise FrameDecodeError(f"truncated: {field} needs {n} bytes", field=field)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def end(self, field: str) -> None:
        if self.pos != len(self.data):
            raise FrameDecodeError(f"{len(self.data) - self.pos} trailing bytes", field=field)


def _kind(r: _Reader, expected: int) -> None:
    kind = r.uint(1, "kind")
    if kind != expected:
        raise FrameDecodeError(f"kind 0x{kind:02x}, expected 0x{expected:02x}", field="kind")


def _role(value: int, field: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise FrameDecodeError(f"unknown role {value}", field=field) from None


def _group_id(r: _Reader) -> bytes:
    n = r.uint(1, "group_id")
    if n == 0:
        raise FrameDecodeError("empty group id", field="group_id")
    return r.take(n, "group_id")


def _enc_group_id(group_id: bytes) -> bytes:
    if not 1 <= len(group_id) <= MAX_GROUP_ID:
        raise FrameDecodeError("a group id is 1..255 bytes", field="group_id")
    return bytes([len(group_id)]) + group_id


def _enc_roles(roles: tuple[tuple[NodeAddress, Role], ...], field: str) -> bytes:
    if len(roles) > MAX_TARGETS:
        raise FrameDecodeError(f"more than {MAX_TARGETS} entries", field=field)
    return len(roles).to_bytes(2, "big") + b"".join(a.raw + bytes([int(r)]) for a, r in roles)


def _dec_roles(r: _Reader, field: str) -> tuple[tuple[NodeAddress, Role], ...]:
    n = r.uint(2, field)
    if n > MAX_TARGETS:
        raise FrameDecodeError(f"{n} entries, at most {MAX_TARGETS}", field=field)
    out = []
    for _ in range(n):
        address = NodeAddress(r.take(ADDRESS_LEN, field))
        out.append((address, _role(r.uint(1, field), field)))
    return tuple(out)


def _blob(r: _Reader, field: str) -> bytes:
    n = r.uint(4, field)
    if n == 0:
        raise FrameDecodeError("empty", field=field)
    return r.take(n, field)


@dataclass(frozen=True, slots=True)
class GroupData:
    """One application message, the same bytes unicast to every member (fan-out)."""

    tip: bytes  # first TIP_LEN bytes of the commit id that made the sender's epoch
    mls: bytes  # MLSMessage (PrivateMessage)

    def encode(self) -> bytes:
        if len(self.tip) != TIP_LEN or not self.mls:
            raise FrameDecodeError("tip is 8 bytes and mls is not empty", field="tip")
        return bytes([KIND_DATA]) + self.tip + self.mls

    @classmethod
    def decode(cls, data: bytes) -> GroupData:
        r = _Reader(data)
        _kind(r, KIND_DATA)
        tip = r.take(TIP_LEN, "tip")
        mls = r.rest()
        if not mls:
            raise FrameDecodeError("no MLS message", field="mls")
        return cls(tip, mls)


@dataclass(frozen=True, slots=True)
class GroupCommit:
    """An MLS commit wrapped with what it means for meshd, signed by the committer's node key.

    The binding cannot put data in the commit itself nor show its proposals, so the action,
    its targets and the parent commit id travel here; receivers check that the signer owns
    the commit's sender leaf, that its role allows the action, and that the roster change
    the commit makes is the one declared.
    """

    action: Action
    committer_key: bytes
    parent: bytes  # commit id that produced the epoch this commit starts from
    targets: tuple[tuple[NodeAddress, Role], ...]
    commit: bytes  # MLSMessage (PublicMessage, content type commit)
    signature: bytes = b""

    def _body(self) -> bytes:
        if len(self.committer_key) != KEY_LEN or len(self.parent) != COMMIT_ID_LEN:
            raise FrameDecodeError("committer key and parent are 32 bytes", field="parent")
        if not self.commit:
            raise FrameDecodeError("empty commit", field="commit")
        return (
            bytes([KIND_COMMIT, int(self.action)])
            + self.committer_key
            + self.parent
            + _enc_roles(self.targets, "targets")
            + len(self.commit).to_bytes(4, "big")
            + self.commit
        )

    def signed(self, identity: Identity) -> GroupCommit:
        sig = identity.sign(_COMMIT_CONTEXT + self._body())
        return GroupCommit(
            self.action, self.committer_key, self.parent, self.targets, self.commit, sig
        )

    def verify(self) -> bool:
        return verify_signature(self.committer_key, self.signature, _COMMIT_CONTEXT + self._body())

    @property
    def id(self) -> bytes:
        return commit_id(self.commit)

    def encode(self) -> bytes:
        if len(self.signature) != SIGNATURE_LEN:
            raise FrameDecodeError("unsigned commit", field="signature")
        return self._body() + self.signature

    @classmethod
    def decode(cls, data: bytes) -> GroupCommit:
        r = _Reader(data)
        _kind(r, KIND_COMMIT)
        raw_action = r.uint(1, "action")
        try:
            action = Action(raw_action)
        except ValueError:
            raise FrameDecodeError(f"unknown action {raw_action}", field="action") from None
        key = r.take(KEY_LEN, "committer_key")
        parent = r.take(COMMIT_ID_LEN, "parent")
        targets = _dec_roles(r, "targets")
        commit = _blob(r, "commit")
        sig = r.take(SIGNATURE_LEN, "signature")
        r.end("signature")
        return cls(action, key, parent, targets, commit, sig)


@dataclass(frozen=True, slots=True)
class GroupWelcome:
    """The MLS Welcome plus meshd's group metadata (name, roles), signed by the inviter."""

    group_id: bytes  # also inside the (encrypted) GroupInfo; the joiner checks they agree
    inviter_key: bytes
    tip: bytes  # commit id of the Add commit: the joiner's first epoch
    name: str
    roles: tuple[tuple[NodeAddress, Role], ...]  # every member's role at that epoch
    welcome: bytes
    signature: bytes = b""

    def _body(self) -> bytes:
        if len(self.inviter_key) != KEY_LEN or len(self.tip) != COMMIT_ID_LEN:
            raise FrameDecodeError("inviter key and tip are 32 bytes", field="tip")
        name = self.name.encode()
        if len(name) > MAX_NAME:
            raise FrameDecodeError(f"name longer than {MAX_NAME} bytes", field="name")
        if not self.welcome:
            raise FrameDecodeError("empty welcome", field="welcome")
        return (
            bytes([KIND_WELCOME])
            + _enc_group_id(self.group_id)
            + self.inviter_key
            + self.tip
            + bytes([len(name)])
            + name
            + _enc_roles(self.roles, "roles")
            + len(self.welcome).to_bytes(4, "big")
            + self.welcome
        )

    def signed(self, identity: Identity) -> GroupWelcome:
        sig = identity.sign(_WELCOME_CONTEXT + self._body())
        return GroupWelcome(
            self.group_id, self.inviter_key, self.tip, self.name, self.roles, self.welcome, sig
        )

    def verify(self) -> bool:
        return verify_signature(self.inviter_key, self.signature, _WELCOME_CONTEXT + self._body())

    def encode(self) -> bytes:
        if len(self.signature) != SIGNATURE_LEN:
            raise FrameDecodeError("unsigned welcome", field="signature")
        return self._body() + self.signature

    @classmethod
    def decode(cls, data: bytes) -> GroupWelcome:
        r = _Reader(data)
        _kind(r, KIND_WELCOME)
        group_id = _group_id(r)
        key = r.take(KEY_LEN, "inviter_key")
        tip = r.take(COMMIT_ID_LEN, "tip")
        try:
            name = r.take(r.uint(1, "name"), "name").decode()
        except UnicodeDecodeError:
            raise FrameDecodeError("name is not UTF-8", field="name") from None
        roles = _dec_roles(r, "roles")
        welcome = _blob(r, "welcome")
        sig = r.take(SIGNATURE_LEN, "signature")
        r.end("signature")
        return cls(group_id, key, tip, name, roles, welcome, sig)


@dataclass(frozen=True, slots=True)
class CatchUpRequest:
    """Ask a member for the commits it applied from ``from_epoch`` on."""

    group_id: bytes
    from_epoch: int

    def encode(self) -> bytes:
        if not 0 <= self.from_epoch < 1 << 64:
            raise FrameDecodeError("epoch out of range", field="from_epoch")
        return (
            bytes([KIND_CATCHUP_REQUEST])
            + _enc_group_id(self.group_id)
            + self.from_epoch.to_bytes(8, "big")
        )

    @classmethod
    def decode(cls, data: bytes) -> CatchUpRequest:
        r = _Reader(data)
        _kind(r, KIND_CATCHUP_REQUEST)
        group_id = _group_id(r)
        epoch = r.uint(8, "from_epoch")
        r.end("from_epoch")
        return cls(group_id, epoch)


@dataclass(frozen=True, slots=True)
class CatchUpResponse:
    """Encoded ``GroupCommit`` payloads in epoch order (each checked like a live one)."""

    group_id: bytes
    commits: tuple[bytes, ...]

    def encode(self) -> bytes:
        if len(self.commits) > MAX_CATCHUP_ENTRIES:
            raise FrameDecodeError(f"more than {MAX_CATCHUP_ENTRIES}", field="commits")
        parts = [bytes([KIND_CATCHUP_RESPONSE]), _enc_group_id(self.group_id)]
        parts.append(len(self.commits).to_bytes(2, "big"))
        for c in self.commits:
            parts.append(len(c).to_bytes(4, "big") + c)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> CatchUpResponse:
        r = _Reader(data)
        _kind(r, KIND_CATCHUP_RESPONSE)
        group_id = _group_id(r)
        n = r.uint(2, "commits")
        if n > MAX_CATCHUP_ENTRIES:
            raise FrameDecodeError(f"{n} commits, at most {MAX_CATCHUP_ENTRIES}", field="commits")
        commits = tuple(_blob(r, "commits") for _ in range(n))
        r.end("commits")
        return cls(group_id, commits)


@dataclass(frozen=True, slots=True)
class LeaveRequest:
    """A member asks the admins to remove it (MLS does not let a member commit its own
    removal), signed by its node key."""

    group_id: bytes
    epoch: int
    member_key: bytes
    signature: bytes = b""

    def _body(self) -> bytes:
        if len(self.member_key) != KEY_LEN:
            raise FrameDecodeError("member key is 32 bytes", field="member_key")
        if not 0 <= self.epoch < 1 << 64:
            raise FrameDecodeError("epoch out of range", field="epoch")
        return (
            bytes([KIND_LEAVE])
            + _enc_group_id(self.group_id)
            + self.epoch.to_bytes(8, "big")
            + self.member_key
        )

    def signed(self, identity: Identity) -> LeaveRequest:
        sig = identity.sign(_LEAVE_CONTEXT + self._body())
        return LeaveRequest(self.group_id, self.epoch, self.member_key, sig)

    def verify(self) -> bool:
        return verify_signature(self.member_key, self.signature, _LEAVE_CONTEXT + self._body())

    def encode(self) -> bytes:
        if len(self.signature) != SIGNATURE_LEN:
            raise FrameDecodeError("unsigned leave request", field="signature")
        return self._body() + self.signature

    @classmethod
    def decode(cls, data: bytes) -> LeaveRequest:
        r = _Reader(data)
        _kind(r, KIND_LEAVE)
        group_id = _group_id(r)
        epoch = r.uint(8, "epoch")
        key = r.take(KEY_LEN, "member_key")
        sig = r.take(SIGNATURE_LEN, "signature")
        r.end("signature")
        return cls(group_id, epoch, key, sig)


@dataclass(frozen=True, slots=True)
class Fragment:
    """One piece of a group payload too big for one mesh message (a Welcome for a 256-member
    group is ~72 KB with the ratchet tree; the mesh carries < 64 KiB per message)."""

    frag_id: bytes
    index: int
    count: int
    chunk: bytes

    def encode(self) -> bytes:
        if not (len(self.frag_id) == FRAG_ID_LEN and 0 <= self.index < self.count):
            raise FrameDecodeError("bad fragment header", field="index")
        if self.count > MAX_FRAGMENTS or not self.chunk:
            raise FrameDecodeError(f"1..{MAX_FRAGMENTS} non-empty fragments", field="count")
        return _FRAG_HEAD.pack(KIND_FRAGMENT, self.frag_id, self.index, self.count) + self.chunk

    @classmethod
    def decode(cls, data: bytes) -> Fragment:
        r = _Reader(data)
        _kind(r, KIND_FRAGMENT)
        frag_id = r.take(FRAG_ID_LEN, "frag_id")
        index = r.uint(2, "index")
        count = r.uint(2, "count")
        if not 1 <= count <= MAX_FRAGMENTS:
            raise FrameDecodeError(f"count {count}, must be 1..{MAX_FRAGMENTS}", field="count")
        if index >= count:
            raise FrameDecodeError(f"index {index} >= count {count}", field="index")
        chunk = r.rest()
        if not chunk:
            raise FrameDecodeError("empty fragment", field="chunk")
        return cls(frag_id, index, count, chunk)


def fragment(payload: bytes, max_len: int) -> list[bytes]:
    """``payload`` itself if it fits in ``max_len``, else FRAGMENT payloads that do."""
    if len(payload) <= max_len:
        return [payload]
    size = max_len - _FRAG_HEAD.size
    count = -(-len(payload) // size)
    if count > MAX_FRAGMENTS:
        raise FrameDecodeError(f"payload of {len(payload)} bytes is too big", field="payload")
    frag_id = hashlib.sha256(payload).digest()[:FRAG_ID_LEN]
    return [
        Fragment(frag_id, i, count, payload[i * size : (i + 1) * size]).encode()
        for i in range(count)
    ]


def kind_of(payload: bytes) -> int:
    if not payload:
        raise FrameDecodeError("empty payload", field="kind")
    return payload[0]
