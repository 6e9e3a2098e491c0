"""The ``MlsEngine`` interface: what meshd needs from an MLS (RFC 9420) implementation.

The engine is deliberately thin. It does MLS and nothing else: it does not decide who may
add or remove members, it does not order concurrent commits, and it does not send
anything. The daemon keeps rosters, roles and authorization in its own signed control
messages (the mls-rs binding cannot inspect proposals), calls :meth:`MlsEngine.peek` to see
who sent a commit *before* applying it, and ships the bytes the engine returns.

Conventions:

* Group ids and messages are ``bytes``; messages are RFC 9420 ``MLSMessage`` encodings.
* Every call that changes MLS state persists it before returning (a restart resumes),
  except, for an engine in write-behind mode, the ratchet advance of an application
  message (``encrypt``/``process``): that is persisted by :meth:`MlsEngine.flush`, which
  the owner must call before any ciphertext produced since leaves the process.
* A committer's own commit is applied before the call returns (mls-rs needs the committer
  to process its own commit before others can follow); the returned ``epoch`` is the new
  one, and the same commit bytes go to every other member.
* Errors are :mod:`meshd.errors` classes: ``InvalidArgument`` (bad input, ``field`` set),
  ``NotFound`` (unknown group or member), ``CryptoError`` (state forbids the operation),
  ``UndecryptableError`` (incoming message refused: tampered, replayed, stale, forged),
  ``EpochAheadError`` (message from a later epoch: apply the missing commits first).
* Concurrent commits from a partition fork the group; which branch wins is the daemon's
  rule, and :meth:`MlsEngine.rollback` lets the losing side return to the fork epoch.
* Engines are not thread-safe; one engine per node, driven from one event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from meshd.address import NodeAddress
from meshd.crypto.mls.wire import MessageInfo

CIPHER_SUITE = 0x0001
CIPHER_SUITE_NAME = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"
#: Default meshd-level lifetime of a published key package (the issuer refuses Welcomes
#: for it afterwards).
DEFAULT_KEY_PACKAGE_LIFETIME_S = 7 * 24 * 3600.0

__all__ = [
    "CIPHER_SUITE",
    "CIPHER_SUITE_NAME",
    "DEFAULT_KEY_PACKAGE_LIFETIME_S",
    "ApplicationMessage",
    "CommitResult",
    "EpochChanged",
    "Incoming",
    "Joined",
    "KeyPackage",
    "Member",
    "MessageInfo",
    "MlsEngine",
]


@dataclass(frozen=True, slots=True)
class Member:
    """One leaf of a group's ratchet tree, tied to a meshd node identity.

    ``node_key`` is the node's Ed25519 identity key; ``signature_key`` is the separate MLS
    signature key the node endorsed with it (see :mod:`meshd.crypto.mls.credential`).
    ``verified`` is False when the leaf's credential does not carry a valid endorsement
    (a non-meshd client or a forgery); such a member has no trustworthy address.
    """

    leaf_index: int
    node_key: bytes
    signature_key: bytes
    verified: bool
    identity: bytes  # the raw BasicCredential identity (endorsement included)
    # Derived on first use: a roster's Member objects name the sender of every message
    # (SHA-256 per call was 2 % of the receiving daemon's Python time).
    _address: NodeAddress | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def address(self) -> NodeAddress:
        if self._address is None:
            object.__setattr__(self, "_address", NodeAddress.from_public_key(self.node_key))
        assert self._address is not None
        return self._address


@dataclass(frozen=True, slots=True)
class KeyPackage:
    """A key package this node generated, to be published ahead of time."""

    data: bytes  # MLSMessage(KeyPackage)
    ref: bytes  # KeyPackageRef (RFC 9420 §5.2)
    created_at: float
    expires_at: float  # meshd-level expiry; never later than the MLS lifetime's not_after
    mls_not_after: int  # the MLS Lifetime (seconds since the epoch) mls-rs wrote into it


@dataclass(frozen=True, slots=True)
class CommitResult:
    group_id: bytes
    commit: bytes  # MLSMessage for every current member (already applied locally)
    welcome: bytes | None  # MLSMessage(Welcome) for added members
    epoch: int  # the epoch the group is in after the commit


@dataclass(frozen=True, slots=True)
class Joined:
    group_id: bytes
    epoch: int
    members: tuple[Member, ...]


@dataclass(frozen=True, slots=True)
class ApplicationMessage:
    group_id: bytes
    epoch: int
    sender: Member
    plaintext: bytes


@dataclass(frozen=True, slots=True)
class EpochChanged:
    """A commit from another member was applied."""

    group_id: bytes
    epoch: int
    committer: Member | None
    removed: bool  # this node was removed by the commit; the group is now read-only
    members: tuple[Member, ...]


Incoming = ApplicationMessage | EpochChanged


class MlsEngine(ABC):
    """One node's MLS state: its signer, key packages and every group it belongs to."""

    @property
    @abstractmethod
    def node_key(self) -> bytes:
        """The node's Ed25519 identity public key this engine's MLS signer is bound to."""

    @property
    def address(self) -> NodeAddress:
        """The node address the MLS credential is bound to."""
        return NodeAddress.from_public_key(self.node_key)

    @property
    @abstractmethod
    def signature_key(self) -> bytes:
        """This node's MLS signature public key (Ed25519, separate from the node key)."""

    @abstractmethod
    def generate_key_package(
        self, *, now: float, lifetime_s: float = DEFAULT_KEY_PACKAGE_LIFETIME_S
    ) -> KeyPackage:
        """A fresh single-use key package; its private keys live only in this process."""

    @abstractmethod
    def inspect_key_package(self, data: bytes, *, now: float) -> Member:
        """Validate a peer's key package (suite, endorsement, lifetime) and say whose it is."""

    @abstractmethod
    def create_group(self, group_id: bytes | None = None) -> bytes:
        """Create a group with this node as the only member, at epoch 0."""

    @abstractmethod
    def add_members(
        self, group_id: bytes, key_packages: Sequence[bytes], *, now: float
    ) -> CommitResult:
        """Commit Add proposals for the key packages; returns the commit and the Welcome."""

    @abstractmethod
    def remove_members(self, group_id: bytes, members: Sequence[NodeAddress]) -> CommitResult:
        """Commit the removal of members, named by node address."""

    @abstractmethod
    def self_update(self, group_id: bytes) -> CommitResult:
        """Commit a fresh leaf key and update path (post-compromise security)."""

    @abstractmethod
    def join_group(self, welcome: bytes, *, now: float) -> Joined:
        """Join from a Welcome made for one of this node's key packages."""

    @abstractmethod
    def encrypt(self, group_id: bytes, plaintext: bytes) -> bytes:
        """Seal an application message for the group's current epoch."""

    @abstractmethod
    def peek(self, message: bytes) -> MessageInfo:
        """Read a message's plaintext framing (group, epoch, kind, commit sender leaf)."""

    @abstractmethod
    def process(self, message: bytes) -> Incoming:
        """Open an application message or apply another member's commit."""

    @abstractmethod
    def export_secret(self, group_id: bytes, label: bytes, context: bytes, length: int) -> bytes:
        """MLS-Exporter(label, context, length) of the current epoch (RFC 9420 §8.5)."""

    @abstractmethod
    def epoch(self, group_id: bytes) -> int: ...

    @abstractmethod
    def members(self, group_id: bytes) -> tuple[Member, ...]:
        """The current roster as the ratchet tree says (leaf order)."""

    @abstractmethod
    def groups(self) -> tuple[bytes, ...]: ...

    @abstractmethod
    def forget_group(self, group_id: bytes) -> None:
        """Drop a group's state (after leaving it or being removed)."""

    @abstractmethod
    def rollback(self, group_id: bytes, epoch: int) -> None:
        """Return the group to the last state it had at an earlier, retained ``epoch``.

        For partition forks: when two branches of commits grew from one epoch, the
        members of the losing branch roll back to the fork epoch and process the winning
        branch's commits in order. Raises ``NotFound`` if the epoch is no longer retained.
        """

    @property
    def key_packages_in_memory(self) -> int:
        """Key packages whose private keys this engine holds in memory (0: not tracked)."""
        return 0

    def drop_key_packages(self) -> None:
        """Free every key package private key held in memory; all of them become unusable
        (a Welcome for one is refused as after a restart). Groups are not affected."""
        return None

    @property
    def commits_with_store(self) -> bool:
        """Whether state writes join the node's store transaction (so the pump may write
        every group before its commit, atomically with the messages)."""
        return False

    def flush(self, *, opened_only: bool = True) -> bool:
        """Persist state changes deferred by write-behind; True if anything was written.

        The node's pump calls it before its store commit (frames leave only after that
        commit, so no ciphertext leaves before the ratchet state that produced it). An
        engine whose state ``commits_with_store`` is flushed whole there; one with a
        database of its own gets ``opened_only=False`` there (groups that sealed) and a
        plain ``flush()`` after the commit (groups that only opened messages, whose
        advance must not be on disk before the messages are). An engine that writes
        through (the default) has nothing pending.
        """
        return False

    def sync(self) -> None:
        """Make what was persisted survive power loss (fsync); safe from another thread."""
        return None

    @abstractmethod
    def reencode(self, message: bytes) -> bytes:
        """Parse an MLSMessage with the engine's own codec and serialize it again."""
