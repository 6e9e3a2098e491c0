"""End-to-end body codecs: the doc's vectors, round trips, and typed errors only."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.address import NodeAddress
from meshd.crypto.identity import Identity
from meshd.crypto.identity import verify_signature as openssl_verify
from meshd.errors import FrameDecodeError
from meshd.router.e2e_bodies import (
    ACK_BODY_LEN,
    MAX_PAYLOAD_LEN,
    RECEIPT_BODY_LEN,
    AckBody,
    AckEntry,
    CustodyOfferBody,
    CustodyReceiptBody,
    DataBody,
    decode_ack_batch_body,
    decode_ack_body,
    decode_any_ack,
    decode_data_body,
    decode_offer_body,
    decode_receipt_body,
    payload_digest,
)
from meshd.router.e2e_bodies import verify_signature as sodium_verify
from meshd.router.frames import MAX_BODY_LEN, Frame, FrameFlags, FrameType, decode_frame
from tests.unit.endpoint_harness import identity

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"
SECTION = "## End-to-end bodies (DATA, ACK, CUSTODY_*)"
_BLOCK = re.compile(r"```hex vector=(e2e-[\w-]+)\n(.*?)```", re.S)

A, R, B, R2 = identity(1), identity(2), identity(3), identity(5)
MID = bytes.fromhex("0102030405060708")
DIGEST = payload_digest(b"hello")


def _vectors() -> dict[str, bytes]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    nxt = section.find("\n## ", len(SECTION))
    section = section if nxt < 0 else section[:nxt]
    return {name: bytes.fromhex("".join(body.split())) for name, body in _BLOCK.findall(section)}


VECTORS = _vectors()


def test_the_section_has_one_vector_per_body_type() -> None:
    assert set(VECTORS) == {
        "e2e-data", "e2e-data-custodian", "e2e-ack", "e2e-ack-batch", "e2e-custody-receipt",
        "e2e-custody-offer",
    }
    for data in VECTORS.values():
        assert decode_frame(data).encode() == data


def test_data_vectors() -> None:
    frame = decode_frame(VECTORS["e2e-data"])
    assert (frame.type, frame.frame_id, frame.src, frame.dst) == (
        FrameType.DATA, MID, A.address, B.address)
    assert frame.flags == FrameFlags.ACK_REQUESTED | FrameFlags.CUSTODY_ALLOWED
    body = decode_data_body(frame.body)
    assert body == DataBody(b"hello", 3600, None)
    assert body.encode() == frame.body
    handed = decode_frame(VECTORS["e2e-data-custodian"])
    hbody = decode_data_body(handed.body)
    assert hbody == DataBody(b"hello", 3000, R.address) and handed.attempt == 2
    assert (handed.src, handed.frame_id) == (A.address, MID)  # kept across the hand-off
    assert hbody.encode() == handed.body


def test_ack_vector_is_signed_by_the_destination() -> None:
    frame = decode_frame(VECTORS["e2e-ack"])
    assert (frame.type, frame.src, frame.dst) == (FrameType.ACK, B.address, A.address)
    body = decode_ack_body(frame.body)
    assert body.encode() == frame.body
    assert (body.message_id, body.echo_attempt) == (MID, 0)
    assert body.signer_key == B.public.signing_key
    assert body.verify(sender=A.address, destination=B.address, digest=DIGEST)
    assert not body.verify(sender=A.address, destination=B.address, digest=payload_digest(b"x"))
    assert not body.verify(sender=R.address, destination=B.address, digest=DIGEST)
    assert not body.verify(sender=A.address, destination=R.address, digest=DIGEST)


def test_batch_ack_vector_is_signed_once_for_every_entry() -> None:
    frame = decode_frame(VECTORS["e2e-ack-batch"])
    assert (frame.type, frame.src, frame.dst) == (FrameType.ACK, B.address, A.address)
    body = decode_ack_batch_body(frame.body)
    assert decode_any_ack(frame.body) == body and body.encode() == frame.body
    assert body.entries == (
        AckEntry(MID, 0, DIGEST),
        AckEntry(bytes.fromhex("0102030405060709"), 1, payload_digest(b"world")),
    )
    assert body.signer_key == B.public.signing_key
    assert body.verify(sender=A.address, destination=B.address)
    assert not body.verify(sender=R.address, destination=B.address)
    assert not body.verify(sender=A.address, destination=R.address)
    echo_changed = replace(body, entries=(replace(body.entries[0], echo_attempt=9),
                                          body.entries[1]))  # fmt: skip
    assert echo_changed.verify(sender=A.address, destination=B.address)  # not signed
    for changed in (replace(body.entries[0], digest=payload_digest(b"x")),
                    replace(body.entries[0], message_id=b"\0" * 8)):  # fmt: skip
        assert not replace(body, entries=(changed, body.entries[1])).verify(
            sender=A.address, destination=B.address)  # fmt: skip
    # Neither a version-1 ACK nor a receipt can be made of its signature.
    v1 = AckBody(MID, 0, body.signer_key, body.signature)
    assert not v1.verify(sender=A.address, destination=B.address, digest=DIGEST)
    assert decode_any_ack(VECTORS["e2e-ack"][46:]) == decode_ack_body(VECTORS["e2e-ack"][46:])


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"", "body_version"),
        (b"\x03" + b"\0" * 200, "body_version"),
        (b"\x02\x01" + b"\0" * 50, "ack_body"),
        (b"\x02\x00" + b"\0" * 96, "count"),
        (b"\x02\x21" + b"\0" * (96 + 33 * 41), "count"),
        (b"\x02\x02" + b"\0" * (96 + 41), "ack_body"),
        (b"\x02\x01" + b"\0" * (96 + 42), "ack_body"),
    ],
)
def test_batch_ack_decode_errors_name_the_field(data: bytes, field: str) -> None:
    with pytest.raises(FrameDecodeError) as info:
        decode_ack_batch_body(data) if data[:1] != b"\x03" else decode_any_ack(data)
    assert info.value.field == field


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1600))
def test_any_ack_decoder_raises_only_frame_decode_errors(data: bytes) -> None:
    with contextlib.suppress(FrameDecodeError):
        decode_any_ack(data)
    with contextlib.suppress(FrameDecodeError):
        body = decode_ack_batch_body(b"\x02" + data)
        assert decode_ack_batch_body(body.encode()) == body


def test_receipt_vector_is_signed_by_the_custodian() -> None:
    frame = decode_frame(VECTORS["e2e-custody-receipt"])
    assert (frame.type, frame.src, frame.dst) == (FrameType.CUSTODY_RECEIPT, R.address, A.address)
    body = decode_receipt_body(frame.body)
    assert body.encode() == frame.body
    assert (body.message_id, body.origin, body.signer_key) == (MID, A.address, R.public.signing_key)
    assert body.verify(signer=R.address, destination=B.address, digest=DIGEST)
    assert not body.verify(signer=B.address, destination=B.address, digest=DIGEST)


def test_an_ack_signature_does_not_pass_as_a_receipt() -> None:
    ack = decode_ack_body(decode_frame(VECTORS["e2e-ack"]).body)
    forged = CustodyReceiptBody(MID, A.address, ack.signer_key, ack.signature)
    assert not forged.verify(signer=B.address, destination=B.address, digest=DIGEST)


def test_offer_vector_wraps_the_hand_off_frame() -> None:
    frame = decode_frame(VECTORS["e2e-custody-offer"])
    assert (frame.type, frame.src, frame.dst) == (FrameType.CUSTODY_OFFER, R.address, R2.address)
    offer = decode_offer_body(frame.body)
    assert offer.inner.encode() == VECTORS["e2e-data-custodian"]
    assert offer.encode() == frame.body


addresses = st.binary(min_size=16, max_size=16).map(NodeAddress)


@given(st.binary(max_size=2048), st.integers(0, 2**32 - 1), st.none() | addresses)
def test_data_body_round_trips(
    payload: bytes, lifetime: int, custodian: NodeAddress | None
) -> None:
    body = DataBody(payload, lifetime, custodian)
    assert decode_data_body(body.encode()) == body


@given(st.binary(min_size=8, max_size=8), st.integers(0, 255), st.binary(min_size=32, max_size=32),
       st.binary(min_size=64, max_size=64), addresses)
def test_ack_and_receipt_round_trip(
    mid: bytes, echo: int, key: bytes, sig: bytes, origin: NodeAddress
) -> None:
    ack = AckBody(mid, echo, key, sig)
    assert len(ack.encode()) == ACK_BODY_LEN and decode_ack_body(ack.encode()) == ack
    receipt = CustodyReceiptBody(mid, origin, key, sig)
    assert len(receipt.encode()) == RECEIPT_BODY_LEN
    assert decode_receipt_body(receipt.encode()) == receipt


DECODERS: list[Callable[[bytes], object]] = [
    decode_data_body, decode_ack_body, decode_receipt_body, decode_offer_body
]


@pytest.mark.parametrize("decoder", DECODERS)
@given(data=st.binary(max_size=300))
def test_decoders_raise_only_frame_decode_error(
    decoder: Callable[[bytes], object], data: bytes
) -> None:
    with contextlib.suppress(FrameDecodeError):
        decoder(data)


@pytest.mark.parametrize("decoder", DECODERS)
@given(data=st.data())
def test_mutated_vectors_raise_only_frame_decode_error(
    decoder: Callable[[bytes], object], data: st.DataObject
) -> None:
    base = decode_frame(data.draw(st.sampled_from(sorted(VECTORS.values())))).body
    index = data.draw(st.integers(0, len(base)))
    mutated = base[:index] + data.draw(st.binary(max_size=3)) + base[index + 1:]
    with contextlib.suppress(FrameDecodeError):
        decoder(mutated)


@pytest.mark.parametrize(
    ("decoder", "data", "field"),
    [
        (decode_data_body, b"", "body_version"),
        (decode_data_body, b"\x02\x00\x00\x00\x00\x01", "body_version"),
        (decode_data_body, b"\x01\x00\x00", "lifetime_left"),
        (decode_data_body, b"\x01\x80\x00\x00\x00\x01", "data_flags"),
        (decode_data_body, b"\x01\x01\x00\x00\x00\x01" + b"\x00" * 15, "custodian"),
        (decode_ack_body, b"\x01" + b"\x00" * 104, "ack_body"),
        (decode_receipt_body, b"\x01" + b"\x00" * 121, "receipt_body"),
        (decode_offer_body, b"\x01" + b"\x00" * 10, None),
    ],
)
def test_malformed_bodies_name_the_field(
    decoder: Callable[[bytes], object], data: bytes, field: str | None
) -> None:
    with pytest.raises(FrameDecodeError) as err:
        decoder(data)
    if field is not None:
        assert err.value.field == field


def test_offer_must_carry_data() -> None:
    ack = decode_frame(VECTORS["e2e-ack"])
    with pytest.raises(FrameDecodeError) as err:
        decode_offer_body(b"\x01" + ack.encode())
    assert err.value.field == "inner_type"
    with pytest.raises(FrameDecodeError):
        CustodyOfferBody(ack).encode()


def test_largest_payload_fits_in_an_offer() -> None:
    body = DataBody(b"\xaa" * MAX_PAYLOAD_LEN, 1, R.address).encode()
    inner = Frame(FrameType.DATA, MID, A.address, B.address, body)
    offer = CustodyOfferBody(inner).encode()
    assert len(offer) == MAX_BODY_LEN
    with pytest.raises(FrameDecodeError) as err:
        DataBody(b"\xaa" * (MAX_PAYLOAD_LEN + 1), 1).encode()
    assert err.value.field == "payload"


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=200), flip=st.integers(min_value=0, max_value=8 * 64 - 1))
def test_libsodium_verify_agrees_with_openssl(data: bytes, flip: int) -> None:
    """The ACK verifier (libsodium) accepts exactly what identity's (OpenSSL) accepts, on
    valid signatures, any one flipped signature bit, another key and wrong lengths."""
    signer, other = Identity.from_seed(bytes(64)), Identity.from_seed(bytes(range(64)))
    key, sig = signer.public.signing_key, signer.sign(data)
    bad = bytearray(sig)
    bad[flip // 8] ^= 1 << (flip % 8)
    cases = [
        (key, sig, data),
        (key, bytes(bad), data),
        (other.public.signing_key, sig, data),
        (key, sig, data + b"x"),
        (key[:31], sig, data),
        (key, sig[:63], data),
    ]
    results = [sodium_verify(*c) for c in cases]
    assert results == [openssl_verify(*c) for c in cases]
    assert results[0] and not any(results[1:])
