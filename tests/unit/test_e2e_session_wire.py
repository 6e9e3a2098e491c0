"""Session payload codecs (0x10..0x1F): doc vectors, round trips, typed errors."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.crypto.identity import Identity
from meshd.e2e import kinds
from meshd.e2e import session_wire as sw
from meshd.envelope import Envelope
from meshd.errors import FrameDecodeError, InvalidArgument

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"
_BLOCK = re.compile(r"```hex vector=(session-[\w-]+)\n(.*?)```", re.S)
GID = bytes(range(0x10, 0x20))
RID = bytes.fromhex("0102030405060708")
AUTH = bytes(range(0xA0, 0xA0 + sw.AUTH_LEN))
# The identities the doc's signed vectors are made with (deterministic Ed25519).
SIGNER, RECEIVER = Identity.from_seed(bytes(range(64))), Identity.from_seed(bytes(range(64, 128)))
SIGNED = {"session-kp-request", "session-kp-response", "session-reset", "session-conn-reject",
          "session-conn-cancel", "session-conn-held"}  # fmt: skip


def doc_vectors() -> dict[str, bytes]:
    text = DOC.read_text()
    return {m[1]: bytes.fromhex("".join(m[2].split())) for m in _BLOCK.finditer(text)}


EXPECTED: dict[str, object] = {
    "session-app": sw.SessionApp(bytes.fromhex("0001000203a1a2a3")),
    "session-init": sw.SessionInit(sw.InitFlags.REQUEST, GID, bytes.fromhex("00010003b1b2b3"),
                                   bytes.fromhex("00010002c1c2")),
    "session-kp-request": sw.KpRequest(RID),
    "session-kp-response": sw.KpResponse(RID, bytes.fromhex("00010005d1d2")),
    "session-reset": sw.SessionReset(sw.ResetReason.KEY_PACKAGE_GONE, GID,
                                     bytes.fromhex("00010005d1d2")),
    "session-conn-accept": sw.ConnAccept(GID, bytes.fromhex("0001000203e1e2")),
    "session-conn-reject": sw.ConnReject(sw.RejectReason.DECLINED, GID),
    "session-conn-cancel": sw.ConnCancel(GID),
    "session-conn-held": sw.ConnHeld(GID),
    "session-commit": sw.SessionCommit(bytes.fromhex("00010003f1f2f3"),
                                       bytes.fromhex("0001000203a1a2a3")),
}  # fmt: skip


def test_every_doc_vector_decodes_to_its_fields_and_reencodes() -> None:
    vectors = doc_vectors()
    assert set(EXPECTED) <= set(vectors)
    for name, frame in EXPECTED.items():
        data = vectors[name]
        assert kinds.family_of(data) is kinds.PayloadFamily.SESSION
        if name in SIGNED:  # the trailer is the real signature of the doc's identities
            frame = replace(frame, auth=data[-sw.AUTH_LEN :])  # type: ignore[type-var]
            assert sw.control_forgery(data, SIGNER.address, RECEIVER.address, None) is None
            assert sw.sign_control(frame, SIGNER, RECEIVER.address) == data  # type: ignore[arg-type]
        decoded = sw.decode(data)
        assert decoded == frame, name
        assert decoded.encode() == data, name


def test_signatures_bind_source_destination_pin_and_content() -> None:
    data = sw.sign_control(sw.ConnCancel(GID), SIGNER, RECEIVER.address)
    other = Identity.from_seed(bytes(range(1, 65)))
    assert sw.control_forgery(data, SIGNER.address, RECEIVER.address, None) is None
    pinned = SIGNER.public.signing_key
    assert sw.control_forgery(data, SIGNER.address, RECEIVER.address, pinned) is None
    # Redirected to a third node, claimed by another source, a changed byte, a stale pin.
    assert sw.control_forgery(data, SIGNER.address, other.address, None) == "bad signature"
    assert "not the source's" in str(sw.control_forgery(data, other.address, RECEIVER.address,
                                                        None))  # fmt: skip
    tampered = data[:1] + bytes([data[1] ^ 1]) + data[2:]
    assert sw.control_forgery(tampered, SIGNER.address, RECEIVER.address, None) == "bad signature"
    stale = other.public.signing_key
    assert "pinned" in str(sw.control_forgery(data, SIGNER.address, RECEIVER.address, stale))
    # A forger signing with its own key cannot claim the signer's address.
    forged = sw.sign_control(sw.ConnCancel(GID), other, RECEIVER.address)
    assert sw.control_forgery(forged, SIGNER.address, RECEIVER.address, None) is not None


def test_doc_sealed_and_extension_vectors() -> None:
    vectors = doc_vectors()
    app = sw.decode_sealed(vectors["session-sealed-app"])
    assert app == sw.Sealed(sw.SealedType.APP, RID, Envelope("chat", b"hello"))
    assert app.encode() == vectors["session-sealed-app"]
    control = sw.decode_sealed(vectors["session-sealed-control"])
    assert control == sw.Sealed(sw.SealedType.CONTROL, RID, None)
    assert control.encode() == vectors["session-sealed-control"]
    ext = sw.decode_extensions(vectors["session-extensions"])
    assert ext == {sw.EXT_KEY_PACKAGE: bytes.fromhex("00010005d1d2")}
    assert sw.encode_extensions(ext) == vectors["session-extensions"]


blobs = st.binary(min_size=1, max_size=300)
gids = st.binary(min_size=1, max_size=255)
ids = st.binary(min_size=8, max_size=8)
auths = st.binary(min_size=sw.AUTH_LEN, max_size=sw.AUTH_LEN)
frames = st.one_of(
    st.builds(sw.SessionApp, blobs),
    st.builds(sw.SessionInit, st.sampled_from(list(sw.InitFlags)), gids, blobs,
              st.binary(max_size=300)),
    st.builds(sw.KpRequest, ids, auths),
    st.builds(sw.KpResponse, ids, blobs, auths),
    st.builds(sw.SessionReset, st.sampled_from(list(sw.ResetReason)), gids, blobs, auths),
    st.builds(sw.ConnAccept, gids, blobs),
    st.builds(sw.ConnReject, st.sampled_from(list(sw.RejectReason)), gids, auths),
    st.builds(sw.ConnCancel, gids, auths),
    st.builds(sw.SessionCommit, blobs, st.binary(max_size=300)),
    st.builds(sw.ConnHeld, gids, auths),
)  # fmt: skip


@given(frames)
def test_round_trip(frame: sw.SessionFrame) -> None:
    assert sw.decode(frame.encode()) == frame


@given(st.binary(max_size=400))
def test_arbitrary_bytes_decode_or_raise_frame_decode_error(data: bytes) -> None:
    try:
        frame = sw.decode(bytes([0x10 + (data[0] % 10) if data else 0x10]) + data[1:])
    except FrameDecodeError as exc:
        assert exc.field
    else:
        assert frame.encode()  # whatever decodes also encodes
    try:
        sw.decode_sealed(data)
    except FrameDecodeError as exc:
        assert exc.field
    try:
        sw.decode_extensions(data)
    except FrameDecodeError as exc:
        assert exc.field


@given(frames, st.data())
def test_truncations_are_refused_naming_a_field(
    frame: sw.SessionFrame, data: st.DataObject
) -> None:
    encoded = frame.encode()
    cut = data.draw(st.integers(0, len(encoded) - 1))
    short = encoded[:cut]
    try:
        decoded = sw.decode(short)
    except FrameDecodeError as exc:
        assert exc.field
    else:  # a shorter to-the-end blob is still a well-formed frame of that kind
        assert type(decoded) is type(frame)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"", "kind"),
        (b"\x1f", "kind"),
        (b"\x10", "message"),
        (b"\x11\x02\x01a\x00\x01w", "flags"),
        (b"\x11\x01\x00", "group_id"),
        (b"\x11\x00\x01g\x00\x05abc", "welcome"),
        (b"\x12" + RID, "auth"),
        (b"\x12\x01\x02" + AUTH, "request_id"),
        (b"\x12" + RID + b"x" + AUTH, "trailing"),
        (b"\x13" + RID + AUTH, "key_package"),
        (b"\x14\x09\x01g kp" + AUTH, "reason"),
        (b"\x16\x07\x01g" + AUTH, "reason"),
        (b"\x17\x01g!" + AUTH, "trailing"),
        (b"\x18\x00\x00", "commit"),
        (b"\x18\x00\x05ab", "commit"),
        (b"\x19\x01g!" + AUTH, "trailing"),
    ],
)
def test_malformed_frames_name_the_field(data: bytes, field: str) -> None:
    with pytest.raises(FrameDecodeError) as err:
        sw.decode(data)
    assert err.value.field == field


def test_sealed_records_refuse_bad_versions_and_types() -> None:
    with pytest.raises(FrameDecodeError, match="version"):
        sw.decode_sealed(b"\x02\x01" + RID)
    with pytest.raises(FrameDecodeError) as err:
        sw.decode_sealed(b"\x01\x07" + RID)
    assert err.value.field == "type"
    with pytest.raises(FrameDecodeError) as err:
        sw.decode_sealed(b"\x01\x01" + RID + b"\x01\x00")
    assert err.value.field == "app_id"


def test_encoders_refuse_out_of_range_fields() -> None:
    with pytest.raises(InvalidArgument) as err:
        sw.SessionInit(sw.InitFlags.NONE, b"", b"w", b"").encode()
    assert err.value.field == "group_id"
    with pytest.raises(InvalidArgument):
        sw.KpRequest(b"short", AUTH).encode()
    with pytest.raises(InvalidArgument) as err:
        sw.KpRequest(RID).encode()  # unsigned
    assert err.value.field == "auth"
    with pytest.raises(InvalidArgument):
        sw.Sealed(sw.SealedType.APP, RID, None).encode()
