"""The post-handshake record channel (meshd.crypto.channel)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.crypto.channel import SecureChannel
from meshd.crypto.handshake import CipherState, LinkHandshake
from meshd.crypto.identity import Identity
from meshd.errors import WireError
from meshd.router.frames import MAX_FRAME_LEN
from meshd.transports.framing import RecordDecoder, RecordType


def pair(rekey_every: int = 1 << 20) -> tuple[SecureChannel, SecureChannel]:
    a = LinkHandshake(Identity.from_seed(b"\x01" * 64), initiator=True, transport_kind=b"t")
    b = LinkHandshake(Identity.from_seed(b"\x02" * 64), initiator=False, transport_kind=b"t")
    b.receive(a.receive(b.receive(a.start())))
    ra, rb = a.result(), b.result()
    return (
        SecureChannel(ra.send, ra.recv, rekey_every=rekey_every),
        SecureChannel(rb.send, rb.recv, rekey_every=rekey_every),
    )


def test_frames_up_to_max_frame_len_are_one_record_each_way() -> None:
    a, b = pair()
    decoder = RecordDecoder()
    for size in (0, 1, 1024, 65535, MAX_FRAME_LEN):
        frame = bytes([size % 251]) * size
        header, ct = a.seal(RecordType.DATA, frame)
        [(rtype, h, body)] = decoder.feed(header + ct)
        assert rtype == RecordType.DATA
        assert b.open(h, body) == frame
    header, ct = b.seal(RecordType.PING, b"12345678")
    assert a.open(header, ct) == b"12345678"


def test_tampered_header_or_body_or_replay_fails() -> None:
    a, b = pair()
    header, ct = a.seal(RecordType.DATA, b"frame")
    bad_type = bytes([RecordType.PING]) + header[1:]
    with pytest.raises(WireError):
        b.open(bad_type, ct)
    a2, b2 = pair()
    header, ct = a2.seal(RecordType.DATA, b"frame")
    assert b2.open(header, ct) == b"frame"
    with pytest.raises(WireError):
        b2.open(header, ct)  # replay: the nonce has moved on
    with pytest.raises(WireError, match="tag"):
        b2.open(header, b"short")


def test_rekey_happens_on_both_sides_after_n_records() -> None:
    a, b = pair(rekey_every=3)
    sealed = [a.seal(RecordType.DATA, b"%d" % i) for i in range(10)]
    assert [b.open(h, c) for h, c in sealed] == [b"%d" % i for i in range(10)]
    # A receiver that does not rekey cannot read past record 3: the keys really changed.
    a_fast, b_slow = pair(rekey_every=3)
    b_slow_no_rekey = SecureChannel(b_slow._send, b_slow._recv, rekey_every=1 << 20)
    sealed = [a_fast.seal(RecordType.DATA, b"x") for _ in range(4)]
    for h, c in sealed[:3]:
        b_slow_no_rekey.open(h, c)
    with pytest.raises(WireError):
        b_slow_no_rekey.open(*sealed[3])


def test_channel_refuses_unkeyed_states() -> None:
    with pytest.raises(WireError, match="keyed"):
        SecureChannel(CipherState(), CipherState(bytes(32)))


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=2048), st.integers(0, 4095))
def test_any_bit_flip_fails_authentication(frame: bytes, pos: int) -> None:
    a, b = pair()
    header, ct = a.seal(RecordType.DATA, frame)
    mutated = bytearray(ct)
    mutated[pos % len(mutated)] ^= 0x80
    with pytest.raises(WireError):
        b.open(header, bytes(mutated))
