"""Codecs for the end-to-end bodies: DATA, ACK (single and batch), CUSTODY_OFFER,
CUSTODY_RECEIPT (wire v1; the batch ACK is ACK body version 2).

Layouts and test vectors are in docs/wire-format.md, section "End-to-end bodies". Every
decoder raises ``FrameDecodeError`` naming the field on malformed input and nothing else.

Signatures (Ed25519) are domain-separated and bind the message id, the original sender,
the destination and a SHA-256 of the payload, so that an ACK proves *this* content reached
*that* destination and cannot be replayed for another message or as a custody receipt.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from nacl.bindings import crypto_sign_open
from nacl.exceptions import CryptoError

from meshd.address import ADDRESS_LEN, NodeAddress
from meshd.crypto.identity import KEY_LEN, SIGNATURE_LEN, Identity
from meshd.errors import AddressError, FrameDecodeError
from meshd.router.frames import (
    FRAME_ID_LEN,
    HEADER_LEN,
    MAX_BODY_LEN,
    Frame,
    FrameType,
    decode_frame,
)

E2E_BODY_VERSION = 1
ACK_CONTEXT = b"meshd/ack/v1\x00"
ACK_BATCH_CONTEXT = b"meshd/ack-batch/v1\x00"
ACK_BATCH_VERSION = 2
#: Messages one batch ACK covers at most (41 bytes each: the frame stays < 1,500 bytes).
MAX_ACK_BATCH = 32
RECEIPT_CONTEXT = b"meshd/custody-receipt/v1\x00"

DATA_HAS_CUSTODIAN = 0x01
_DATA_KNOWN_FLAGS = DATA_HAS_CUSTODIAN
_DATA_FIXED = struct.Struct(">BBI")  # body version, flags, lifetime left (s)
_ACK = struct.Struct(">B8sB32s64s")  # version, message id, echoed attempt, key, signature
_RECEIPT = struct.Struct(">B8s16s32s64s")  # version, message id, origin, key, signature
_ACK_BATCH = struct.Struct(">BB32s64s")  # version 2, count, key, signature
_ACK_ENTRY = struct.Struct(">8sB32s")  # message id, echoed attempt, payload digest
MAX_LIFETIME_WIRE = 0xFFFFFFFF

DATA_OVERHEAD = _DATA_FIXED.size + ADDRESS_LEN  # worst case: with a custodian
OFFER_OVERHEAD = 1 + HEADER_LEN  # version byte + the whole inner DATA frame's header
# Largest app payload: it must still fit when a custodian wraps it in a CUSTODY_OFFER.
MAX_PAYLOAD_LEN = MAX_BODY_LEN - OFFER_OVERHEAD - DATA_OVERHEAD
ACK_BODY_LEN = _ACK.size
RECEIPT_BODY_LEN = _RECEIPT.size

assert FRAME_ID_LEN == 8 and KEY_LEN == 32 and SIGNATURE_LEN == 64


def verify_signature(signing_key: bytes, signature: bytes, data: bytes) -> bool:
    """Ed25519 verify through libsodium (PyNaCl): every delivered message costs its sender
    one of these, and OpenSSL's (``meshd.crypto.identity.verify_signature``) took 160-200
    us here, libsodium's 80-85 us (the sender's largest single cost at ~500 msg/s).
    libsodium is the stricter of the two (it also refuses small-order and non-canonical
    keys and points), so it accepts nothing OpenSSL would refuse."""
    if len(signing_key) != KEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        crypto_sign_open(signature + data, signing_key)
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def payload_digest(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


def lifetime_left(expires_at: float, now: float) -> int:
    """Whole seconds left (rounded up), as the wire carries them."""
    return max(0, min(MAX_LIFETIME_WIRE, math.ceil(expires_at - now)))


def _check_version(data: bytes, what: str) -> None:
    if not data:
        raise FrameDecodeError(f"empty {what} body", field="body_version")
    if data[0] != E2E_BODY_VERSION:
        raise FrameDecodeError(
            f"unsupported {what} body version {data[0]}", field="body_version"
        )


def _address(raw: bytes, field: str) -> NodeAddress:
    try:
        return NodeAddress(raw)
    except AddressError as exc:  # pragma: no cover - length is fixed by the struct
        raise FrameDecodeError(str(exc), field=field) from exc


# --- DATA -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataBody:
    """An app payload plus what relays holding it in custody need to know."""

    payload: bytes
    lifetime_left: int  # whole seconds left when this copy left its originator/custodian
    custodian: NodeAddress | None = None  # who to send a CUSTODY_RECEIPT to, if anyone

    def encode(self) -> bytes:
        if not 0 <= self.lifetime_left <= MAX_LIFETIME_WIRE:
            raise FrameDecodeError("lifetime_left out of range 0..2^32-1", field="lifetime_left")
        if len(self.payload) > MAX_PAYLOAD_LEN:
            raise FrameDecodeError(
                f"payload longer than {MAX_PAYLOAD_LEN} bytes", field="payload"
            )
        flags = DATA_HAS_CUSTODIAN if self.custodian is not None else 0
        head = _DATA_FIXED.pack(E2E_BODY_VERSION, flags, self.lifetime_left)
        if self.custodian is not None:
            head += self.custodian.raw
        return head + self.payload


def decode_data_body(data: bytes) -> DataBody:
    _check_version(data, "DATA")
    if len(data) < _DATA_FIXED.size:
        raise FrameDecodeError("DATA body truncated", field="lifetime_left")
    _, flags, lifetime = _DATA_FIXED.unpack_from(data)
    if flags & ~_DATA_KNOWN_FLAGS:
        raise FrameDecodeError(f"unknown DATA body flags 0x{flags:02x}", field="data_flags")
    offset = _DATA_FIXED.size
    custodian = None
    if flags & DATA_HAS_CUSTODIAN:
        if len(data) < offset + ADDRESS_LEN:
            raise FrameDecodeError("DATA body truncated", field="custodian")
        custodian = _address(bytes(data[offset : offset + ADDRESS_LEN]), "custodian")
        offset += ADDRESS_LEN
    payload = bytes(data[offset:])
    if len(payload) > MAX_PAYLOAD_LEN:
        raise FrameDecodeError(f"payload longer than {MAX_PAYLOAD_LEN} bytes", field="payload")
    return DataBody(payload=payload, lifetime_left=lifetime, custodian=custodian)


# --- ACK ----------------------------------------------------------------------------


def ack_signed_part(
    message_id: bytes, sender: NodeAddress, destination: NodeAddress, digest: bytes
) -> bytes:
    """What the destination signs: it received ``message_id`` from ``sender`` intact."""
    return ACK_CONTEXT + message_id + sender.raw + destination.raw + digest


@dataclass(frozen=True, slots=True)
class AckBody:
    """End-to-end ACK, signed by the destination, self-certifying (key hashes to src)."""

    message_id: bytes
    echo_attempt: int  # the DATA header's ``attempt`` this answers (RTT sampling, unsigned)
    signer_key: bytes
    signature: bytes

    def encode(self) -> bytes:
        _check_fields(self.message_id, self.signer_key, self.signature)
        if not 0 <= self.echo_attempt <= 255:
            raise FrameDecodeError("echo_attempt out of range 0..255", field="echo_attempt")
        return _ACK.pack(
            E2E_BODY_VERSION, self.message_id, self.echo_attempt, self.signer_key, self.signature
        )

    def verify(
        self, *, sender: NodeAddress, destination: NodeAddress, digest: bytes,
        signer_address: NodeAddress | None = None,
    ) -> bool:
        """True when the key is ``destination``'s and the signature covers this message.
        ``signer_address``: ``NodeAddress.from_public_key(signer_key)`` if the caller has
        it already (the Endpoint caches it), else it is derived here."""
        if signer_address is None:
            signer_address = NodeAddress.from_public_key(self.signer_key)
        if signer_address != destination:
            return False
        signed = ack_signed_part(self.message_id, sender, destination, digest)
        return verify_signature(self.signer_key, self.signature, signed)


def decode_ack_body(data: bytes) -> AckBody:
    _check_version(data, "ACK")
    if len(data) != _ACK.size:
        raise FrameDecodeError(f"ACK body must be {_ACK.size} bytes", field="ack_body")
    _, message_id, echo, key, signature = _ACK.unpack(data)
    return AckBody(message_id, echo, key, signature)


# --- batch ACK (ACK body version 2) --------------------------------------------------


@dataclass(frozen=True, slots=True)
class AckEntry:
    """One message a batch ACK acknowledges."""

    message_id: bytes
    echo_attempt: int  # as in AckBody (unsigned)
    digest: bytes  # SHA-256 of the payload the destination received (signed)


def ack_batch_signed_part(
    sender: NodeAddress, destination: NodeAddress, entries: Sequence[AckEntry]
) -> bytes:
    """What the destination signs once for a batch: it received each ``message_id`` from
    ``sender`` with that payload digest."""
    parts = [ACK_BATCH_CONTEXT, sender.raw, destination.raw, bytes([len(entries)])]
    parts += [e.message_id + e.digest for e in entries]
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class AckBatchBody:
    """One signed end-to-end ACK for several messages from one sender (a destination's
    ACKs of one drain): one Ed25519 signature and verification instead of one per message
    (~30 us to sign, ~70 us to verify each, profiled at ~800 msg/s). Each entry carries
    its digest, so the sender can check the signature even if it already forgot some ids."""

    entries: tuple[AckEntry, ...]
    signer_key: bytes
    signature: bytes

    def encode(self) -> bytes:
        if not 1 <= len(self.entries) <= MAX_ACK_BATCH:
            raise FrameDecodeError(f"a batch ACK has 1..{MAX_ACK_BATCH} entries", field="count")
        _check_fields(FRAME_ID_LEN * b"\0", self.signer_key, self.signature)
        out = [_ACK_BATCH.pack(ACK_BATCH_VERSION, len(self.entries), self.signer_key,
                               self.signature)]  # fmt: skip
        for e in self.entries:
            if len(e.message_id) != FRAME_ID_LEN:
                raise FrameDecodeError(f"message_id must be {FRAME_ID_LEN} bytes",
                                       field="message_id")  # fmt: skip
            if not 0 <= e.echo_attempt <= 255:
                raise FrameDecodeError("echo_attempt out of range 0..255", field="echo_attempt")
            if len(e.digest) != 32:
                raise FrameDecodeError("digest must be 32 bytes", field="digest")
            out.append(_ACK_ENTRY.pack(e.message_id, e.echo_attempt, e.digest))
        return b"".join(out)

    def verify(
        self, *, sender: NodeAddress, destination: NodeAddress,
        signer_address: NodeAddress | None = None,
    ) -> bool:
        """True when the key is ``destination``'s and the signature covers every entry
        (the caller still compares each entry's digest with its own copy)."""
        if signer_address is None:
            signer_address = NodeAddress.from_public_key(self.signer_key)
        if signer_address != destination:
            return False
        signed = ack_batch_signed_part(sender, destination, self.entries)
        return verify_signature(self.signer_key, self.signature, signed)


def decode_ack_batch_body(data: bytes) -> AckBatchBody:
    if not data:
        raise FrameDecodeError("empty ACK body", field="body_version")
    if data[0] != ACK_BATCH_VERSION:
        raise FrameDecodeError(f"not a batch ACK (version {data[0]})", field="body_version")
    if len(data) < _ACK_BATCH.size:
        raise FrameDecodeError("batch ACK truncated", field="ack_body")
    _, count, key, signature = _ACK_BATCH.unpack_from(data)
    if not 1 <= count <= MAX_ACK_BATCH:
        raise FrameDecodeError(f"a batch ACK has 1..{MAX_ACK_BATCH} entries", field="count")
    if len(data) != _ACK_BATCH.size + count * _ACK_ENTRY.size:
        raise FrameDecodeError(
            f"batch ACK of {count} entries must be "
            f"{_ACK_BATCH.size + count * _ACK_ENTRY.size} bytes", field="ack_body",
        )  # fmt: skip
    entries = tuple(
        AckEntry(*_ACK_ENTRY.unpack_from(data, _ACK_BATCH.size + i * _ACK_ENTRY.size))
        for i in range(count)
    )
    return AckBatchBody(entries, key, signature)


def decode_any_ack(data: bytes) -> AckBody | AckBatchBody:
    """An ACK body of either version: 1 (one message) or 2 (a batch)."""
    if data and data[0] == ACK_BATCH_VERSION:
        return decode_ack_batch_body(data)
    return decode_ack_body(data)


# --- CUSTODY_RECEIPT -----------------------------------------------------------------


def receipt_signed_part(
    message_id: bytes, origin: NodeAddress, destination: NodeAddress, digest: bytes
) -> bytes:
    """What a custodian (or the destination) signs: it now holds this message."""
    return RECEIPT_CONTEXT + message_id + origin.raw + destination.raw + digest


@dataclass(frozen=True, slots=True)
class CustodyReceiptBody:
    """"I hold (src=origin, message_id) now": the previous holder may stop retrying."""

    message_id: bytes
    origin: NodeAddress  # the message's original sender (with message_id: the dedup key)
    signer_key: bytes
    signature: bytes

    def encode(self) -> bytes:
        _check_fields(self.message_id, self.signer_key, self.signature)
        return _RECEIPT.pack(
            E2E_BODY_VERSION, self.message_id, self.origin.raw, self.signer_key, self.signature
        )

    @property
    def signer(self) -> NodeAddress:
        return NodeAddress.from_public_key(self.signer_key)

    def verify(self, *, signer: NodeAddress, destination: NodeAddress, digest: bytes) -> bool:
        """True when the key is ``signer``'s and the signature covers this message."""
        if NodeAddress.from_public_key(self.signer_key) != signer:
            return False
        signed = receipt_signed_part(self.message_id, self.origin, destination, digest)
        return verify_signature(self.signer_key, self.signature, signed)


def decode_receipt_body(data: bytes) -> CustodyReceiptBody:
    _check_version(data, "CUSTODY_RECEIPT")
    if len(data) != _RECEIPT.size:
        raise FrameDecodeError(
            f"CUSTODY_RECEIPT body must be {_RECEIPT.size} bytes", field="receipt_body"
        )
    _, message_id, origin, key, signature = _RECEIPT.unpack(data)
    return CustodyReceiptBody(message_id, _address(origin, "origin"), key, signature)


# --- CUSTODY_OFFER -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CustodyOfferBody:
    """A held DATA frame, unchanged header, handed to a chosen node (header dst)."""

    inner: Frame

    def encode(self) -> bytes:
        if self.inner.type is not FrameType.DATA:
            raise FrameDecodeError("a custody offer carries a DATA frame", field="inner_type")
        return bytes([E2E_BODY_VERSION]) + self.inner.encode()


def decode_offer_body(data: bytes) -> CustodyOfferBody:
    _check_version(data, "CUSTODY_OFFER")
    inner = decode_frame(bytes(data[1:]))
    if inner.type is not FrameType.DATA:
        raise FrameDecodeError("a custody offer carries a DATA frame", field="inner_type")
    decode_data_body(inner.body)  # validate now: the receiver stores it
    return CustodyOfferBody(inner)


# --- frames the endpoint originates ------------------------------------------------


def receipt_frame(
    identity: Identity,
    frame_id: bytes,
    *,
    message_id: bytes,
    origin: NodeAddress,
    destination: NodeAddress,
    digest: bytes,
    to: NodeAddress,
    ttl: int,
) -> Frame:
    """A CUSTODY_RECEIPT signed by ``identity``, for the previous holder ``to``."""
    signed = receipt_signed_part(message_id, origin, destination, digest)
    body = CustodyReceiptBody(message_id, origin, identity.public.signing_key,
                              identity.sign(signed))
    return Frame(FrameType.CUSTODY_RECEIPT, frame_id, identity.address, to, body.encode(),
                 ttl=ttl)


def offer_frame(frame_id: bytes, *, src: NodeAddress, to: NodeAddress, inner: Frame,
                ttl: int) -> Frame:
    """A CUSTODY_OFFER carrying ``inner`` (a DATA frame) from ``src`` to ``to``."""
    return Frame(FrameType.CUSTODY_OFFER, frame_id, src, to,
                 CustodyOfferBody(inner).encode(), ttl=ttl)


def _check_fields(message_id: bytes, key: bytes, signature: bytes) -> None:
    if len(message_id) != FRAME_ID_LEN:
        raise FrameDecodeError(f"message_id must be {FRAME_ID_LEN} bytes", field="message_id")
    if len(key) != KEY_LEN:
        raise FrameDecodeError(f"signer_key must be {KEY_LEN} bytes", field="signer_key")
    if len(signature) != SIGNATURE_LEN:
        raise FrameDecodeError(f"signature must be {SIGNATURE_LEN} bytes", field="signature")
