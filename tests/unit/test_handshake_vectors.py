"""Fixed test vectors for the link layer (handshake transcript, first DATA record).

Inputs: identities from seeds ``bytes(range(64))`` (initiator) and
``bytes(range(64, 128))`` (responder), ephemeral X25519 private keys ``e1``*32 and
``e2``*32, transport kind ``inet``. Ed25519 signatures are deterministic, so the whole
transcript is. The Noise layer itself is cross-checked against ``noiseprotocol`` in
test_handshake.py; these vectors pin the meshd binding (payload layout, signed data,
prologue, record framing) so that another implementation can check itself.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meshd.crypto.channel import SecureChannel
from meshd.crypto.handshake import LinkHandshake
from meshd.crypto.identity import Identity
from meshd.transports.framing import RecordDecoder, RecordType, encode_record

MSG1_RECORD = "010000204c2817a9d668ed844d2f95b93b69ecb8485095783a015a424164b0d09702894f"
MSG2_LEN, MSG2_SHA256 = 193, "d3aed5edebef3898935212ab84e650abc7e7ff595f3bc54204a13e4da5020d21"
MSG3_LEN, MSG3_SHA256 = 161, "edf57530871a0973e8280d7c804f84673c99298ee29a0749a2585ef32e3ea9d5"
HANDSHAKE_HASH = "d5056d47649a039712dad1947e45af618511e38fa59355f5d79f26c38e6bd2e0"
# First record the initiator sends: DATA "hello mesh" (header || ciphertext || tag).
FIRST_DATA_RECORD = "0200001a731b5ca84afa9b1c251134b8f068fb189d10264aa425ca5aa956"


def _handshake() -> tuple[LinkHandshake, LinkHandshake, bytes, bytes, bytes]:
    ia, ib = Identity.from_seed(bytes(range(64))), Identity.from_seed(bytes(range(64, 128)))
    a = LinkHandshake(ia, initiator=True, transport_kind=b"inet",
                      ephemeral=X25519PrivateKey.from_private_bytes(b"\xe1" * 32))
    b = LinkHandshake(ib, initiator=False, transport_kind=b"inet",
                      ephemeral=X25519PrivateKey.from_private_bytes(b"\xe2" * 32))
    m1 = a.start()
    m2 = b.receive(m1)
    m3 = a.receive(m2)
    assert b.receive(m3) == b""
    return a, b, m1, m2, m3


def test_handshake_transcript_matches_vectors() -> None:
    a, b, m1, m2, m3 = _handshake()
    assert encode_record(RecordType.HANDSHAKE, m1).hex() == MSG1_RECORD
    assert (len(m2), hashlib.sha256(m2).hexdigest()) == (MSG2_LEN, MSG2_SHA256)
    assert (len(m3), hashlib.sha256(m3).hexdigest()) == (MSG3_LEN, MSG3_SHA256)
    assert a.result().handshake_hash.hex() == HANDSHAKE_HASH
    assert b.result().handshake_hash.hex() == HANDSHAKE_HASH


def test_first_data_record_matches_vector_and_decodes() -> None:
    a, b, *_ = _handshake()
    ra, rb = a.result(), b.result()
    header, ct = SecureChannel(ra.send, ra.recv).seal(RecordType.DATA, b"hello mesh")
    assert (header + ct).hex() == FIRST_DATA_RECORD
    [(rtype, h, body)] = RecordDecoder().feed(bytes.fromhex(FIRST_DATA_RECORD))
    assert rtype == RecordType.DATA
    assert SecureChannel(rb.send, rb.recv).open(h, body) == b"hello mesh"
