"""IETF MLS test vectors (RFC 9420 interop repository) through the engine and our codec.

The mls-rs binding parses and serializes only whole MLSMessages (``Message.from_bytes`` /
``to_bytes``); it has nothing for a bare ratchet tree, GroupSecrets, proposal or commit.
So the MLSMessage fields go through the engine (:meth:`MlsEngine.reencode`) *and* our
RFC 9420 codec, and the other fields go through our codec alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.crypto.identity import Identity
from meshd.crypto.mls import wire
from meshd.crypto.mls.mlsrs import MlsRsEngine
from meshd.crypto.mls.tls import Reader, encode_varint
from meshd.errors import WireError

VECTORS = Path(__file__).resolve().parents[2].parent / "shared" / "vectors" / "mls"

pytestmark = pytest.mark.skipif(
    not (VECTORS / "messages.json").exists(),
    reason=f"IETF MLS vectors not found at {VECTORS} (../shared/vectors/mls)",
)

# MLSMessage fields of messages.json and what their framing must say.
EXPECTED_FRAMING = {
    "mls_welcome": (wire.WIRE_WELCOME, None),
    "mls_group_info": (wire.WIRE_GROUP_INFO, None),
    "mls_key_package": (wire.WIRE_KEY_PACKAGE, None),
    "public_message_application": (wire.WIRE_PUBLIC_MESSAGE, wire.CONTENT_APPLICATION),
    "public_message_proposal": (wire.WIRE_PUBLIC_MESSAGE, wire.CONTENT_PROPOSAL),
    "public_message_commit": (wire.WIRE_PUBLIC_MESSAGE, wire.CONTENT_COMMIT),
    "private_message": (wire.WIRE_PRIVATE_MESSAGE, None),
}


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlsRsEngine]:
    eng = MlsRsEngine(tmp_path_factory.mktemp("mls-vectors"), Identity.generate())
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def messages() -> list[dict[str, str]]:
    cases: list[dict[str, str]] = load("messages.json")
    assert len(cases) == 300
    return cases


def test_every_field_of_the_vectors_is_covered(messages: list[dict[str, str]]) -> None:
    assert set(messages[0]) == set(wire.VECTOR_FIELDS)


@pytest.mark.parametrize("field", sorted(EXPECTED_FRAMING))
def test_mls_messages_reencode_byte_for_byte_through_the_engine(
    engine: MlsRsEngine, messages: list[dict[str, str]], field: str
) -> None:
    wire_format, content_type = EXPECTED_FRAMING[field]
    for i, case in enumerate(messages):
        data = bytes.fromhex(case[field])
        assert engine.reencode(data) == data, f"case {i} {field}"
        info = engine.peek(data)
        assert info.wire_format == wire_format, f"case {i} {field}"
        if content_type is not None:
            assert info.content_type == content_type, f"case {i} {field}"


@pytest.mark.parametrize("field", sorted(wire.VECTOR_FIELDS))
def test_every_structure_decodes_and_reencodes_with_our_codec(
    messages: list[dict[str, str]], field: str
) -> None:
    codec = wire.VECTOR_FIELDS[field]
    for i, case in enumerate(messages):
        data = bytes.fromhex(case[field])
        value = codec.parse(data, field)
        assert codec.serialize(value, field) == data, f"case {i} {field}"


def test_decoded_fields_make_sense(messages: list[dict[str, str]]) -> None:
    for case in messages:
        kp = wire.parse_key_package(bytes.fromhex(case["mls_key_package"]))
        assert kp["version"] == wire.MLS10
        assert kp["leaf_node"]["leaf_node_source"] == 1  # key_package
        private = wire.MLS_MESSAGE.parse(bytes.fromhex(case["private_message"]))
        info = wire.peek(bytes.fromhex(case["private_message"]))
        assert (info.group_id, info.epoch) == (
            private["body"]["group_id"],
            private["body"]["epoch"],
        )
        tree = wire.RATCHET_TREE.parse(bytes.fromhex(case["ratchet_tree"]))
        assert len(tree) % 2 == 1 or tree == []  # a left-balanced tree has 2n-1 nodes


def test_truncated_or_extended_messages_raise_wire_errors(
    engine: MlsRsEngine, messages: list[dict[str, str]]
) -> None:
    for case in messages[:20]:
        data = bytes.fromhex(case["public_message_commit"])
        with pytest.raises(WireError) as exc:
            wire.MLS_MESSAGE.parse(data[:-1])
        assert exc.value.field is not None
        with pytest.raises(WireError, match="trailing"):
            wire.MLS_MESSAGE.parse(data + b"\x00")
        with pytest.raises(WireError):
            engine.reencode(data[: len(data) // 2])


def test_welcome_vectors_target_their_key_package() -> None:
    """welcome.json: the Welcome's KeyPackageRef equals RefHash of the key package.

    The binding cannot take injected private keys (``init_priv``), so the decryption half
    of this vector is out of reach; the addressing half checks our RefHash (§5.2).
    """
    cases = load("welcome.json")
    assert cases
    for case in cases:
        if case["cipher_suite"] != 1:
            continue
        kp = bytes.fromhex(case["key_package"])
        welcome = bytes.fromhex(case["welcome"])
        assert wire.MLS_MESSAGE.serialize(wire.MLS_MESSAGE.parse(welcome)) == welcome
        assert wire.key_package_ref(kp) in wire.welcome_targets(welcome)


def test_variable_length_headers() -> None:
    for case in load("deserialization.json"):
        header = bytes.fromhex(case["vlbytes_header"])
        r = Reader(header)
        assert r.varint("h") == case["length"]
        r.expect_end("h")
        assert encode_varint(case["length"]) == header


@pytest.mark.parametrize("bad", ["4000", "4001", "8000003f", "80000001", "c0", "40"])
def test_invalid_or_non_minimal_headers_are_refused(bad: str) -> None:
    with pytest.raises(WireError):
        Reader(bytes.fromhex(bad)).varint("h")


@given(st.integers(min_value=0, max_value=(1 << 30) - 1))
def test_varint_round_trip(n: int) -> None:
    encoded = encode_varint(n)
    assert Reader(encoded).varint("n") == n


@given(st.binary(max_size=300))
def test_codec_never_raises_anything_but_wire_error(data: bytes) -> None:
    try:
        value = wire.MLS_MESSAGE.parse(data)
    except WireError:
        return
    assert wire.MLS_MESSAGE.serialize(value) == data
