"""RFC 9420 wire structures, described with :mod:`meshd.crypto.mls.tls`.

The mls-rs binding exposes ``Message.from_bytes/to_bytes`` for MLSMessage only and gives
no access to the fields inside (no epoch, group id, sender, roster, key package ref). These
descriptions fill the gap: they parse MLSMessage framing (§6), key packages (§10), the
ratchet tree (§7.8, §12.4.3.3), Welcome (§12.4.3.1), group secrets, proposals and commits
(§12.1-12.4), and are validated byte for byte against the IETF vectors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from meshd.crypto.mls.tls import (
    EMPTY,
    OPAQUE,
    U8,
    U16,
    U32,
    U64,
    Codec,
    Optional,
    Reader,
    Struct,
    Switch,
    Vector,
)
from meshd.errors import WireError

MLS10 = 1
CIPHER_SUITE_X25519_AES128GCM_SHA256_ED25519 = 0x0001

# §6: WireFormat
WIRE_PUBLIC_MESSAGE = 1
WIRE_PRIVATE_MESSAGE = 2
WIRE_WELCOME = 3
WIRE_GROUP_INFO = 4
WIRE_KEY_PACKAGE = 5

# §6: ContentType
CONTENT_APPLICATION = 1
CONTENT_PROPOSAL = 2
CONTENT_COMMIT = 3

# §6: SenderType
SENDER_MEMBER = 1
SENDER_EXTERNAL = 2
SENDER_NEW_MEMBER_PROPOSAL = 3
SENDER_NEW_MEMBER_COMMIT = 4

CREDENTIAL_BASIC = 1
CREDENTIAL_X509 = 2

_V = Vector

EXTENSION = Struct("Extension", [("extension_type", U16), ("extension_data", OPAQUE)])
EXTENSIONS = _V(EXTENSION)
CERTIFICATE = Struct("Certificate", [("cert_data", OPAQUE)])

CREDENTIAL = Struct(
    "Credential",
    [
        ("credential_type", U16),
        (
            "body",
            Switch(
                lambda d: d["credential_type"],
                {
                    CREDENTIAL_BASIC: Struct("Basic", [("identity", OPAQUE)]),
                    CREDENTIAL_X509: Struct("X509", [("certificates", _V(CERTIFICATE))]),
                },
            ),
        ),
    ],
)

CAPABILITIES = Struct(
    "Capabilities",
    [
        ("versions", _V(U16)),
        ("cipher_suites", _V(U16)),
        ("extensions", _V(U16)),
        ("proposals", _V(U16)),
        ("credentials", _V(U16)),
    ],
)

LIFETIME = Struct("Lifetime", [("not_before", U64), ("not_after", U64)])

LEAF_NODE = Struct(
    "LeafNode",
    [
        ("encryption_key", OPAQUE),
        ("signature_key", OPAQUE),
        ("credential", CREDENTIAL),
        ("capabilities", CAPABILITIES),
        ("leaf_node_source", U8),
        (
            "source",
            Switch(
                lambda d: d["leaf_node_source"],
                {
                    1: Struct("KeyPackageSource", [("lifetime", LIFETIME)]),
                    2: EMPTY,
                    3: Struct("CommitSource", [("parent_hash", OPAQUE)]),
                },
            ),
        ),
        ("extensions", EXTENSIONS),
        ("signature", OPAQUE),
    ],
)

KEY_PACKAGE = Struct(
    "KeyPackage",
    [
        ("version", U16),
        ("cipher_suite", U16),
        ("init_key", OPAQUE),
        ("leaf_node", LEAF_NODE),
        ("extensions", EXTENSIONS),
        ("signature", OPAQUE),
    ],
)

PARENT_NODE = Struct(
    "ParentNode",
    [("encryption_key", OPAQUE), ("parent_hash", OPAQUE), ("unmerged_leaves", _V(U32))],
)

NODE = Struct(
    "Node",
    [
        ("node_type", U8),
        ("node", Switch(lambda d: d["node_type"], {1: LEAF_NODE, 2: PARENT_NODE})),
    ],
)

RATCHET_TREE = _V(Optional(NODE))

HPKE_CIPHERTEXT = Struct("HPKECiphertext", [("kem_output", OPAQUE), ("ciphertext", OPAQUE)])

WELCOME = Struct(
    "Welcome",
    [
        ("cipher_suite", U16),
        (
            "secrets",
            _V(
                Struct(
                    "EncryptedGroupSecrets",
                    [("new_member", OPAQUE), ("encrypted_group_secrets", HPKE_CIPHERTEXT)],
                )
            ),
        ),
        ("encrypted_group_info", OPAQUE),
    ],
)

GROUP_CONTEXT = Struct(
    "GroupContext",
    [
        ("version", U16),
        ("cipher_suite", U16),
        ("group_id", OPAQUE),
        ("epoch", U64),
        ("tree_hash", OPAQUE),
        ("confirmed_transcript_hash", OPAQUE),
        ("extensions", EXTENSIONS),
    ],
)

GROUP_INFO = Struct(
    "GroupInfo",
    [
        ("group_context", GROUP_CONTEXT),
        ("extensions", EXTENSIONS),
        ("confirmation_tag", OPAQUE),
        ("signer", U32),
        ("signature", OPAQUE),
    ],
)

PRE_SHARED_KEY_ID = Struct(
    "PreSharedKeyID",
    [
        ("psktype", U8),
        (
            "psk",
            Switch(
                lambda d: d["psktype"],
                {
                    1: Struct("External", [("psk_id", OPAQUE)]),
                    2: Struct(
                        "Resumption",
                        [("usage", U8), ("psk_group_id", OPAQUE), ("psk_epoch", U64)],
                    ),
                },
            ),
        ),
        ("psk_nonce", OPAQUE),
    ],
)

GROUP_SECRETS = Struct(
    "GroupSecrets",
    [
        ("joiner_secret", OPAQUE),
        ("path_secret", Optional(Struct("PathSecret", [("path_secret", OPAQUE)]))),
        ("psks", _V(PRE_SHARED_KEY_ID)),
    ],
)

ADD = Struct("Add", [("key_package", KEY_PACKAGE)])
UPDATE = Struct("Update", [("leaf_node", LEAF_NODE)])
REMOVE = Struct("Remove", [("removed", U32)])
PRE_SHARED_KEY = Struct("PreSharedKey", [("psk", PRE_SHARED_KEY_ID)])
REINIT = Struct(
    "ReInit",
    [("group_id", OPAQUE), ("version", U16), ("cipher_suite", U16), ("extensions", EXTENSIONS)],
)
EXTERNAL_INIT = Struct("ExternalInit", [("kem_output", OPAQUE)])
GROUP_CONTEXT_EXTENSIONS = Struct("GroupContextExtensions", [("extensions", EXTENSIONS)])

PROPOSAL = Struct(
    "Proposal",
    [
        ("proposal_type", U16),
        (
            "body",
            Switch(
                lambda d: d["proposal_type"],
                {
                    1: ADD,
                    2: UPDATE,
                    3: REMOVE,
                    4: PRE_SHARED_KEY,
                    5: REINIT,
                    6: EXTERNAL_INIT,
                    7: GROUP_CONTEXT_EXTENSIONS,
                },
            ),
        ),
    ],
)

PROPOSAL_OR_REF = Struct(
    "ProposalOrRef",
    [("type", U8), ("body", Switch(lambda d: d["type"], {1: PROPOSAL, 2: OPAQUE}))],
)

UPDATE_PATH = Struct(
    "UpdatePath",
    [
        ("leaf_node", LEAF_NODE),
        (
            "nodes",
            _V(
                Struct(
                    "UpdatePathNode",
                    [("encryption_key", OPAQUE), ("encrypted_path_secret", _V(HPKE_CIPHERTEXT))],
                )
            ),
        ),
    ],
)

COMMIT = Struct("Commit", [("proposals", _V(PROPOSAL_OR_REF)), ("path", Optional(UPDATE_PATH))])

SENDER = Struct(
    "Sender",
    [
        ("sender_type", U8),
        (
            "index",
            Switch(
                lambda d: d["sender_type"],
                {SENDER_MEMBER: U32, SENDER_EXTERNAL: U32, 3: EMPTY, 4: EMPTY},
            ),
        ),
    ],
)

FRAMED_CONTENT = Struct(
    "FramedContent",
    [
        ("group_id", OPAQUE),
        ("epoch", U64),
        ("sender", SENDER),
        ("authenticated_data", OPAQUE),
        ("content_type", U8),
        (
            "body",
            Switch(
                lambda d: d["content_type"],
                {CONTENT_APPLICATION: OPAQUE, CONTENT_PROPOSAL: PROPOSAL, CONTENT_COMMIT: COMMIT},
            ),
        ),
    ],
)

PUBLIC_MESSAGE = Struct(
    "PublicMessage",
    [
        ("content", FRAMED_CONTENT),
        ("signature", OPAQUE),
        (
            "confirmation_tag",
            Switch(
                lambda d: d["content"]["content_type"],
                {CONTENT_APPLICATION: EMPTY, CONTENT_PROPOSAL: EMPTY, CONTENT_COMMIT: OPAQUE},
            ),
        ),
        (
            "membership_tag",
            Switch(
                lambda d: d["content"]["sender"]["sender_type"],
                {SENDER_MEMBER: OPAQUE, SENDER_EXTERNAL: EMPTY, 3: EMPTY, 4: EMPTY},
            ),
        ),
    ],
)

PRIVATE_MESSAGE = Struct(
    "PrivateMessage",
    [
        ("group_id", OPAQUE),
        ("epoch", U64),
        ("content_type", U8),
        ("authenticated_data", OPAQUE),
        ("encrypted_sender_data", OPAQUE),
        ("ciphertext", OPAQUE),
    ],
)

MLS_MESSAGE = Struct(
    "MLSMessage",
    [
        ("version", U16),
        ("wire_format", U16),
        (
            "body",
            Switch(
                lambda d: d["wire_format"],
                {
                    WIRE_PUBLIC_MESSAGE: PUBLIC_MESSAGE,
                    WIRE_PRIVATE_MESSAGE: PRIVATE_MESSAGE,
                    WIRE_WELCOME: WELCOME,
                    WIRE_GROUP_INFO: GROUP_INFO,
                    WIRE_KEY_PACKAGE: KEY_PACKAGE,
                },
            ),
        ),
    ],
)

#: The IETF ``messages`` vector fields, each with the structure it holds.
VECTOR_FIELDS: dict[str, Codec] = {
    "mls_welcome": MLS_MESSAGE,
    "mls_group_info": MLS_MESSAGE,
    "mls_key_package": MLS_MESSAGE,
    "ratchet_tree": RATCHET_TREE,
    "group_secrets": GROUP_SECRETS,
    "add_proposal": ADD,
    "update_proposal": UPDATE,
    "remove_proposal": REMOVE,
    "pre_shared_key_proposal": PRE_SHARED_KEY,
    "re_init_proposal": REINIT,
    "external_init_proposal": EXTERNAL_INIT,
    "group_context_extensions_proposal": GROUP_CONTEXT_EXTENSIONS,
    "commit": COMMIT,
    "public_message_application": MLS_MESSAGE,
    "public_message_proposal": MLS_MESSAGE,
    "public_message_commit": MLS_MESSAGE,
    "private_message": MLS_MESSAGE,
}


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """What the plaintext framing of an MLSMessage says, before any crypto."""

    wire_format: int
    group_id: bytes | None = None
    epoch: int | None = None
    content_type: int | None = None
    #: Leaf index of a PublicMessage member sender (commits are sent as PublicMessage).
    sender_leaf: int | None = None


def peek(data: bytes) -> MessageInfo:
    """Read the framing of an MLSMessage; the protected content is not decrypted."""
    r = Reader(data)
    version = r.uint(2, "message.version")
    if version != MLS10:
        raise WireError(f"protocol version {version} is not MLS 1.0", field="message.version")
    wire_format = r.uint(2, "message.wire_format")
    if wire_format == WIRE_PRIVATE_MESSAGE:
        group_id = OPAQUE.decode(r, "message.group_id")
        epoch = r.uint(8, "message.epoch")
        return MessageInfo(wire_format, group_id, epoch, r.uint(1, "message.content_type"))
    if wire_format == WIRE_PUBLIC_MESSAGE:
        group_id = OPAQUE.decode(r, "message.group_id")
        epoch = r.uint(8, "message.epoch")
        sender: dict[str, Any] = SENDER.decode(r, "message.sender")
        OPAQUE.decode(r, "message.authenticated_data")
        content_type = r.uint(1, "message.content_type")
        leaf = sender["index"] if sender["sender_type"] == SENDER_MEMBER else None
        return MessageInfo(wire_format, group_id, epoch, content_type, leaf)
    if wire_format in (WIRE_WELCOME, WIRE_GROUP_INFO, WIRE_KEY_PACKAGE):
        return MessageInfo(wire_format)
    raise WireError(f"unknown wire format {wire_format}", field="message.wire_format")


def ref_hash(label: bytes, value: bytes) -> bytes:
    """RefHash (§5.2) with the SHA-256 of cipher suite 0x0001."""
    inner = OPAQUE.serialize(label) + OPAQUE.serialize(value)
    return hashlib.sha256(inner).digest()


def key_package_ref(key_package_message: bytes) -> bytes:
    """KeyPackageRef (§5.2) of a key package given as an MLSMessage."""
    if peek(key_package_message).wire_format != WIRE_KEY_PACKAGE:
        raise WireError("not a key package message", field="key_package")
    return ref_hash(b"MLS 1.0 KeyPackage Reference", key_package_message[4:])


def parse_key_package(key_package_message: bytes) -> dict[str, Any]:
    msg: dict[str, Any] = MLS_MESSAGE.parse(key_package_message, "key_package")
    if msg["wire_format"] != WIRE_KEY_PACKAGE:
        raise WireError("not a key package message", field="key_package")
    body: dict[str, Any] = msg["body"]
    return body


def welcome_targets(welcome_message: bytes) -> list[bytes]:
    """The KeyPackageRefs a Welcome (as an MLSMessage) is encrypted to."""
    msg: dict[str, Any] = MLS_MESSAGE.parse(welcome_message, "welcome")
    if msg["wire_format"] != WIRE_WELCOME:
        raise WireError("not a welcome message", field="welcome")
    return [s["new_member"] for s in msg["body"]["secrets"]]


def tree_leaves(ratchet_tree: bytes) -> list[tuple[int, dict[str, Any]]]:
    """``(leaf_index, LeafNode)`` for every occupied leaf (leaves are the even nodes, §4.1)."""
    nodes: list[dict[str, Any] | None] = RATCHET_TREE.parse(ratchet_tree, "ratchet_tree")
    leaves: list[tuple[int, dict[str, Any]]] = []
    for i in range(0, len(nodes), 2):
        node = nodes[i]
        if node is None:
            continue
        if node["node_type"] != 1:
            raise WireError(f"node {i} should be a leaf", field="ratchet_tree")
        leaves.append((i // 2, node["node"]))
    return leaves


def basic_identity(leaf: dict[str, Any], field: str) -> bytes:
    cred = leaf["credential"]
    if cred["credential_type"] != CREDENTIAL_BASIC:
        raise WireError("not a basic credential", field=field)
    identity: bytes = cred["body"]["identity"]
    return identity
