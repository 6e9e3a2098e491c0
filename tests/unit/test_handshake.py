"""The identity-bound Noise XX link handshake (meshd.crypto.handshake)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from meshd.crypto.handshake import (
    PROTOCOL_NAME,
    CipherState,
    LinkHandshake,
    NoiseXX,
    auth_signed_data,
    prologue_for,
)
from meshd.crypto.identity import Identity
from meshd.errors import HandshakeError

KIND = b"inet"
pytestmark = pytest.mark.filterwarnings("ignore:One of ephemeral keypairs:UserWarning")


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 64)


def run(a: LinkHandshake, b: LinkHandshake) -> tuple[bytes, bytes, bytes]:
    m1 = a.start()
    m2 = b.receive(m1)
    m3 = a.receive(m2)
    assert b.receive(m3) == b""
    return m1, m2, m3


def test_handshake_proves_both_identities_and_keys_pair_up() -> None:
    ia, ib = ident(1), ident(2)
    a = LinkHandshake(ia, initiator=True, transport_kind=KIND, expected_peer=ib.address)
    b = LinkHandshake(ib, initiator=False, transport_kind=KIND)
    m1, m2, m3 = run(a, b)
    assert len(m1) == 32
    ra, rb = a.result(), b.result()
    assert ra.peer == ib.public and rb.peer == ia.public
    assert ra.peer.address == ib.address
    assert ra.handshake_hash == rb.handshake_hash
    # No identity key travels in clear: neither Ed25519 nor X25519 public key is visible.
    for secret in (ia.public.signing_key, ib.public.signing_key,
                   ia.public.exchange_key, ib.public.exchange_key):
        assert secret not in m1 + m2 + m3
    ct = ra.send.encrypt_with_ad(b"", b"hello")
    assert rb.recv.decrypt_with_ad(b"", ct) == b"hello"
    ct = rb.send.encrypt_with_ad(b"", b"back")
    assert ra.recv.decrypt_with_ad(b"", ct) == b"back"


def _noise(initiator: bool, static: bytes, eph: bytes | None, prologue: bytes) -> NoiseConnection:
    conn = NoiseConnection.from_name(PROTOCOL_NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    if eph is not None:
        conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, eph)
    conn.set_prologue(prologue)
    conn.start_handshake()
    return conn


@pytest.mark.parametrize("we_initiate", [True, False])
def test_noise_xx_interoperates_with_noiseprotocol(we_initiate: bool) -> None:
    ours_static, theirs_static = bytes(range(32)), bytes(range(32, 64))
    ours_eph, theirs_eph = bytes(range(64, 96)), bytes(range(96, 128))
    prologue = prologue_for(KIND)
    ours = NoiseXX(
        initiator=we_initiate,
        static=X25519PrivateKey.from_private_bytes(ours_static),
        prologue=prologue,
        ephemeral=X25519PrivateKey.from_private_bytes(ours_eph),
    )
    theirs = _noise(not we_initiate, theirs_static, theirs_eph, prologue)
    payloads = [b"", b"responder payload", b"initiator payload"]
    for i, payload in enumerate(payloads):
        if (i % 2 == 0) == we_initiate:
            msg = ours.write_message(payload)
            assert theirs.read_message(msg) == payload
        else:
            msg = theirs.write_message(payload)
            assert ours.read_message(msg) == payload
    assert ours.complete and theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    assert ours.remote_static == X25519PrivateKey.from_private_bytes(
        theirs_static
    ).public_key().public_bytes_raw()
    send, recv = ours.split()
    for n in range(3):
        data = b"msg %d" % n
        assert theirs.decrypt(send.encrypt_with_ad(b"", data)) == data
        assert recv.decrypt_with_ad(b"", theirs.encrypt(data)) == data
    # REKEY (§11.3) matches the reference implementation too.
    send.rekey()
    theirs.rekey_inbound_cipher()
    assert theirs.decrypt(send.encrypt_with_ad(b"", b"after rekey")) == b"after rekey"


def test_same_ephemerals_give_byte_identical_messages_to_noiseprotocol() -> None:
    s_i, s_r, e_i, e_r = (bytes([n]) * 32 for n in (3, 4, 5, 6))
    ours_i = NoiseXX(initiator=True, static=X25519PrivateKey.from_private_bytes(s_i),
                     ephemeral=X25519PrivateKey.from_private_bytes(e_i), prologue=b"p")
    ours_r = NoiseXX(initiator=False, static=X25519PrivateKey.from_private_bytes(s_r),
                     ephemeral=X25519PrivateKey.from_private_bytes(e_r), prologue=b"p")
    ref_i = _noise(True, s_i, e_i, b"p")
    ref_r = _noise(False, s_r, e_r, b"p")
    m1 = ours_i.write_message(b"x")
    assert m1 == ref_i.write_message(b"x")
    ours_r.read_message(m1)
    ref_r.read_message(m1)
    m2 = ours_r.write_message(b"y")
    assert m2 == ref_r.write_message(b"y")


def test_replayed_transcript_is_refused() -> None:
    ia, ib = ident(1), ident(2)
    a = LinkHandshake(ia, initiator=True, transport_kind=KIND)
    b = LinkHandshake(ib, initiator=False, transport_kind=KIND)
    m1, m2, m3 = run(a, b)
    # An eavesdropper replays A's messages to B: B's fresh ephemeral makes msg 3 fail.
    b2 = LinkHandshake(ib, initiator=False, transport_kind=KIND)
    assert b2.receive(m1) != m2
    with pytest.raises(HandshakeError):
        b2.receive(m3)
    assert not b2.complete
    # ...or replays B's answer to a new dial by A.
    a2 = LinkHandshake(ia, initiator=True, transport_kind=KIND)
    a2.start()
    with pytest.raises(HandshakeError):
        a2.receive(m2)


def test_messages_after_completion_or_out_of_turn_are_refused() -> None:
    ia, ib = ident(1), ident(2)
    a = LinkHandshake(ia, initiator=True, transport_kind=KIND)
    b = LinkHandshake(ib, initiator=False, transport_kind=KIND)
    _, m2, m3 = run(a, b)
    with pytest.raises(HandshakeError):
        b.receive(m3)
    with pytest.raises(HandshakeError):
        a.receive(m2)
    c = LinkHandshake(ia, initiator=True, transport_kind=KIND)
    with pytest.raises(HandshakeError):
        c.receive(m2)  # before start()


def _forged_responder(
    real: Identity, make_payload: object, initiator_msg: bytes
) -> tuple[NoiseXX, bytes]:
    noise = NoiseXX(initiator=False, static=real.exchange_private, prologue=prologue_for(KIND))
    noise.read_message(initiator_msg)
    assert callable(make_payload)
    return noise, noise.write_message(make_payload)


def test_forged_signature_is_refused() -> None:
    ia, mallory, victim = ident(1), ident(7), ident(8)
    a = LinkHandshake(ia, initiator=True, transport_kind=KIND)
    m1 = a.start()

    # Mallory has her own X25519 key but claims the victim's Ed25519 key.
    def claim_victim(h: bytes) -> bytes:
        sig = mallory.sign(auth_signed_data(b"R", mallory.public.exchange_key, h))
        return b"\x01" + victim.public.signing_key + sig

    _, m2 = _forged_responder(mallory, claim_victim, m1)
    with pytest.raises(HandshakeError, match="signature"):
        a.receive(m2)
    assert not a.complete


def test_signature_from_another_session_is_refused() -> None:
    ia, ib = ident(1), ident(2)
    old_hash = bytes(32)
    a = LinkHandshake(ia, initiator=True, transport_kind=KIND)
    m1 = a.start()

    def stale(h: bytes) -> bytes:
        del h  # a valid signature, but over another session's hash
        return b"\x01" + ib.public.signing_key + ib.sign(
            auth_signed_data(b"R", ib.public.exchange_key, old_hash)
        )

    _, m2 = _forged_responder(ib, stale, m1)
    with pytest.raises(HandshakeError, match="signature"):
        a.receive(m2)


def test_signature_for_another_x25519_key_is_refused() -> None:
    ia, ib, other = ident(1), ident(2), ident(3)
    a = LinkHandshake(ia, initiator=True, transport_kind=KIND)
    m1 = a.start()

    def wrong_key(h: bytes) -> bytes:
        return b"\x01" + ib.public.signing_key + ib.sign(
            auth_signed_data(b"R", other.public.exchange_key, h)
        )

    _, m2 = _forged_responder(ib, wrong_key, m1)
    with pytest.raises(HandshakeError):
        a.receive(m2)


def test_forged_initiator_is_refused_by_responder() -> None:
    mallory, victim, ib = ident(7), ident(8), ident(2)
    b = LinkHandshake(ib, initiator=False, transport_kind=KIND)
    noise = NoiseXX(initiator=True, static=mallory.exchange_private, prologue=prologue_for(KIND))
    m2 = b.receive(noise.write_message(b""))
    noise.read_message(m2)

    def claim_victim(h: bytes) -> bytes:
        sig = mallory.sign(auth_signed_data(b"I", mallory.public.exchange_key, h))
        return b"\x01" + victim.public.signing_key + sig

    with pytest.raises(HandshakeError, match="signature"):
        b.receive(noise.write_message(claim_victim))


def test_role_is_bound_a_responder_proof_cannot_pass_as_initiator_proof() -> None:
    ia, ib = ident(1), ident(2)
    b = LinkHandshake(ib, initiator=False, transport_kind=KIND)
    noise = NoiseXX(initiator=True, static=ia.exchange_private, prologue=prologue_for(KIND))
    noise.read_message(b.receive(noise.write_message(b"")))

    def wrong_role(h: bytes) -> bytes:
        return b"\x01" + ia.public.signing_key + ia.sign(
            auth_signed_data(b"R", ia.public.exchange_key, h)
        )

    with pytest.raises(HandshakeError):
        b.receive(noise.write_message(wrong_role))


def test_expected_peer_mismatch_is_refused() -> None:
    ia, ib, ic = ident(1), ident(2), ident(3)
    a = LinkHandshake(ia, initiator=True, transport_kind=KIND, expected_peer=ic.address)
    b = LinkHandshake(ib, initiator=False, transport_kind=KIND)
    with pytest.raises(HandshakeError, match="expected") as info:
        a.receive(b.receive(a.start()))
    assert info.value.field == "peer"
    with pytest.raises(HandshakeError):
        a.result()


def test_transport_kind_is_bound_in_the_prologue() -> None:
    a = LinkHandshake(ident(1), initiator=True, transport_kind=b"inet")
    b = LinkHandshake(ident(2), initiator=False, transport_kind=b"ble")
    with pytest.raises(HandshakeError):
        a.receive(b.receive(a.start()))


def test_low_order_ephemeral_is_refused() -> None:
    b = LinkHandshake(ident(2), initiator=False, transport_kind=KIND)
    with pytest.raises(HandshakeError, match="X25519"):
        b.receive(bytes(32))


def test_first_message_with_payload_is_refused() -> None:
    b = LinkHandshake(ident(2), initiator=False, transport_kind=KIND)
    noise = NoiseXX(initiator=True, static=ident(1).exchange_private,
                    prologue=prologue_for(KIND))
    with pytest.raises(HandshakeError, match="payload"):
        b.receive(noise.write_message(b"junk"))


def test_every_truncation_of_every_message_is_a_typed_error() -> None:
    ia, ib = ident(1), ident(2)
    ref_a = LinkHandshake(ia, initiator=True, transport_kind=KIND)
    ref_b = LinkHandshake(ib, initiator=False, transport_kind=KIND)
    m1, m2, m3 = run(ref_a, ref_b)
    for cut in range(len(m1)):
        with pytest.raises(HandshakeError):
            LinkHandshake(ib, initiator=False, transport_kind=KIND).receive(m1[:cut])
    for cut in range(len(m2)):
        a = LinkHandshake(ia, initiator=True, transport_kind=KIND)
        b = LinkHandshake(ib, initiator=False, transport_kind=KIND)
        msg2 = b.receive(a.start())
        with pytest.raises(HandshakeError):
            a.receive(msg2[:cut])
    for cut in range(len(m3)):
        a = LinkHandshake(ia, initiator=True, transport_kind=KIND)
        b = LinkHandshake(ib, initiator=False, transport_kind=KIND)
        msg3 = a.receive(b.receive(a.start()))
        with pytest.raises(HandshakeError):
            b.receive(msg3[:cut])
    # A failed handshake stays failed.
    with pytest.raises(HandshakeError, match="failed"):
        b.receive(msg3)


@settings(max_examples=60, deadline=None)
@given(garbage=st.binary(min_size=0, max_size=300), flip=st.integers(0, 10_000))
def test_garbage_and_bit_flips_are_typed_errors(garbage: bytes, flip: int) -> None:
    ia, ib = ident(1), ident(2)
    a = LinkHandshake(ia, initiator=True, transport_kind=KIND)
    with pytest.raises(HandshakeError):
        a.start()
        a.receive(garbage)
    a = LinkHandshake(ia, initiator=True, transport_kind=KIND)
    b = LinkHandshake(ib, initiator=False, transport_kind=KIND)
    m2 = bytearray(b.receive(a.start()))
    m2[flip % len(m2)] ^= 1 << (flip % 8)
    with pytest.raises(HandshakeError):
        a.receive(bytes(m2))


def test_cipher_state_without_key_passes_through_and_rekey_changes_key() -> None:
    empty = CipherState()
    assert empty.encrypt_with_ad(b"", b"x") == b"x"
    a, b = CipherState(bytes(32)), CipherState(bytes(32))
    a.rekey()
    ct = a.encrypt_with_ad(b"", b"data")
    assert ct != CipherState(bytes(32)).encrypt_with_ad(b"", b"data")
    b.rekey()
    assert b.decrypt_with_ad(b"", ct) == b"data"
