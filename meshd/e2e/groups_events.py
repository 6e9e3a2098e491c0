"""What the group layer reports (events), what it asks to send, and its settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshd.address import NodeAddress
from meshd.e2e.group_wire import Role
from meshd.router.e2e_bodies import MAX_PAYLOAD_LEN


@dataclass(frozen=True, slots=True)
class GroupConfig:
    #: Own self-update (fresh leaf key, post-compromise security) at least this often.
    update_interval_s: float = 24 * 3600.0
    #: At most one catch-up/sync exchange per peer and group this often.
    catchup_retry_s: float = 5.0
    #: After a fork was resolved, wait this long before re-proposing lost changes, so the
    #: rest of the winning branch arrives first (each re-proposal is a new commit).
    fork_settle_s: float = 3.0
    #: Admins handle a leave request in turn, the n-th admin (by address) after n * this.
    leave_stagger_s: float = 10.0
    #: Messages held for missing commits are dropped after this.
    buffer_ttl_s: float = 300.0
    #: Payloads for a group not joined yet are held this long (its Welcome may be late).
    stash_ttl_s: float = 60.0
    #: Largest mesh payload; bigger group payloads are fragmented.
    max_payload: int = MAX_PAYLOAD_LEN

    def __post_init__(self) -> None:
        from meshd.errors import InvalidArgument

        for name in (
            "update_interval_s",
            "catchup_retry_s",
            "leave_stagger_s",
            "buffer_ttl_s",
            "stash_ttl_s",
        ):
            if not getattr(self, name) > 0:
                raise InvalidArgument("must be positive", field=name)
        if not 64 <= self.max_payload <= MAX_PAYLOAD_LEN:
            raise InvalidArgument(f"must be 64..{MAX_PAYLOAD_LEN}", field="max_payload")


@dataclass(frozen=True, slots=True)
class GroupCreated:
    group_id: bytes
    name: str


@dataclass(frozen=True, slots=True)
class GroupJoined:
    group_id: bytes
    name: str
    inviter: NodeAddress
    epoch: int


@dataclass(frozen=True, slots=True)
class MemberAdded:
    group_id: bytes
    address: NodeAddress
    role: Role
    by: NodeAddress


@dataclass(frozen=True, slots=True)
class MemberRemoved:
    group_id: bytes
    address: NodeAddress
    by: NodeAddress


@dataclass(frozen=True, slots=True)
class RoleChanged:
    group_id: bytes
    address: NodeAddress
    role: Role
    by: NodeAddress


@dataclass(frozen=True, slots=True)
class GroupLeft:
    """This node left the group (its state is gone)."""

    group_id: bytes


@dataclass(frozen=True, slots=True)
class GroupRemoved:
    """This node was removed from the group by ``by`` (its state is gone)."""

    group_id: bytes
    by: NodeAddress | None


@dataclass(frozen=True, slots=True)
class GroupMessage:
    group_id: bytes
    sender: NodeAddress
    app_id: str
    content: bytes
    epoch: int
    message_id: bytes  # first 16 bytes of SHA-256 of the ciphertext: same at every member


@dataclass(frozen=True, slots=True)
class EpochAdvanced:
    group_id: bytes
    epoch: int
    tip: bytes


@dataclass(frozen=True, slots=True)
class ForkResolved:
    """Two commits grew from ``fork_epoch``; this node switched to the winning one."""

    group_id: bytes
    fork_epoch: int
    dropped: int  # commits of the losing branch this node had applied
    reproposed: int  # own changes among them, to be committed again


@dataclass(frozen=True, slots=True)
class KeyPackageNeeded:
    """Re-adding ``address`` (its Add was lost in a fork): fetch a key package and invite."""

    group_id: bytes
    address: NodeAddress
    role: Role


@dataclass(frozen=True, slots=True)
class PayloadRefused:
    """A group payload from ``src`` was refused (malformed, forged, unauthorized...)."""

    group_id: bytes | None
    src: NodeAddress
    reason: str


GroupEvent = (
    GroupCreated
    | GroupJoined
    | MemberAdded
    | MemberRemoved
    | RoleChanged
    | GroupLeft
    | GroupRemoved
    | GroupMessage
    | EpochAdvanced
    | ForkResolved
    | KeyPackageNeeded
    | PayloadRefused
)


@dataclass(slots=True)
class Output:
    """What one call produced: payloads to unicast through the mesh, events, and which
    groups' persisted state changed (``changed``) or is gone (``deleted``)."""

    sends: list[tuple[NodeAddress, bytes]] = field(default_factory=list)
    events: list[GroupEvent] = field(default_factory=list)
    changed: set[bytes] = field(default_factory=set)
    deleted: set[bytes] = field(default_factory=set)
