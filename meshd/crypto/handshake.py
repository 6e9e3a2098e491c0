"""The identity-bound link handshake: Noise XX (rev 34) plus an Ed25519 binding.

``NoiseXX`` is a plain ``Noise_XX_25519_ChaChaPoly_SHA256`` handshake (checked against the
``noiseprotocol`` package in the tests). ``LinkHandshake`` runs it with the node's X25519
key as the Noise static key and puts, inside each side's encrypted handshake payload, its
Ed25519 signing key and a signature over a domain string, its role, its static X25519 key
and the handshake hash at that point. The hash covers both ephemeral keys, so a signature
is only good for this one session: a replayed transcript fails (ephemerals differ), and a
peer that owns the X25519 key but not the Ed25519 key (or the reverse) is refused.

Both classes are sans-IO: they take the bytes that arrived and return the bytes to send.
Message flow (``->`` initiator to responder)::

    -> e                         (32 bytes, empty payload)
    <- e, ee, s, es, AUTH_R      (responder proves its identity)
    -> s, se, AUTH_I             (initiator proves its identity)
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshd.address import NodeAddress
from meshd.crypto.identity import KEY_LEN, SIGNATURE_LEN, Identity, PublicIdentity
from meshd.errors import HandshakeError, WireError

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
PROLOGUE_PREFIX = b"meshd-link-v1"
DHLEN = 32
HASHLEN = 32
TAGLEN = 16
MAX_NOISE_MESSAGE = 65535  # Noise spec §3
MAX_NONCE = 2**64 - 1  # reserved for rekey (§5.1), never used for a message
_AUTH_CONTEXT = b"meshd-link-auth-v1\x00"
_AUTH_VERSION = 1
_AUTH_LEN = 1 + KEY_LEN + SIGNATURE_LEN
_MAX_AUTH_PAYLOAD = 1024  # room for future extensions after the fixed fields
_ZEROS32 = bytes(32)
_NONCE = struct.Struct("<4xQ")  # Noise ChaChaPoly nonce: 32 zero bits + 64-bit LE counter

_PATTERN: tuple[tuple[str, ...], ...] = (("e",), ("e", "ee", "s", "es"), ("s", "se"))


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """HKDF with two outputs (Noise §4.3)."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    return out1, _hmac(temp, out1 + b"\x02")


class CipherState:
    """Noise CipherState (§5.1): one ChaChaPoly key and a 64-bit counter nonce."""

    __slots__ = ("_aead", "_key", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key
        self._aead = ChaCha20Poly1305(key) if key is not None else None
        self.n = 0

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise WireError("nonce space exhausted; the link must be re-established")
        out = self._aead.encrypt(_NONCE.pack(self.n), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt and advance the nonce; a failed tag raises ``WireError``."""
        if self._aead is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise WireError("nonce space exhausted; the link must be re-established")
        try:
            out = self._aead.decrypt(_NONCE.pack(self.n), ciphertext, ad)
        except InvalidTag:
            raise WireError("record failed authentication", field="ciphertext") from None
        self.n += 1
        return out

    def rekey(self) -> None:
        """REKEY (§11.3): k = ENCRYPT(k, maxnonce, zerolen, zeros)[:32]; n is unchanged."""
        if self._aead is None:
            return
        key = self._aead.encrypt(_NONCE.pack(MAX_NONCE), _ZEROS32, b"")[:32]
        self._key = key
        self._aead = ChaCha20Poly1305(key)


class _SymmetricState:
    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = hashlib.sha256(protocol_name).digest()
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self.cipher = CipherState(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = _hkdf2(self.ck, b"")
        return CipherState(k1), CipherState(k2)


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # low-order point: the shared secret would be all zeros
        raise HandshakeError("peer sent an invalid X25519 key", field="handshake.key") from None


class NoiseXX:
    """A ``Noise_XX_25519_ChaChaPoly_SHA256`` handshake state (§5.3), sans-IO."""

    def __init__(
        self,
        *,
        initiator: bool,
        static: X25519PrivateKey,
        prologue: bytes = b"",
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        self.initiator = initiator
        self._s = static
        self._s_pub = static.public_key().public_bytes_raw()
        self._e = ephemeral
        self._re: bytes | None = None
        self.remote_static: bytes | None = None
        self._sym = _SymmetricState(PROTOCOL_NAME)
        self._sym.mix_hash(prologue)
        self._step = 0
        self.payload_hash = b""  # h just before the last payload was (de|en)crypted
        self._result: tuple[CipherState, CipherState] | None = None
        self.handshake_hash = b""

    @property
    def complete(self) -> bool:
        return self._result is not None

    @property
    def step(self) -> int:
        """How many handshake messages have been written or read."""
        return self._step

    @property
    def remote_ephemeral(self) -> bytes | None:
        return self._re

    @property
    def my_turn(self) -> bool:
        return self._step < len(_PATTERN) and (self._step % 2 == 0) == self.initiator

    def write_message(self, payload: bytes | Callable[[bytes], bytes]) -> bytes:
        """Write the next message; ``payload`` may be a function of the current hash."""
        if not self.my_turn:
            raise HandshakeError("not this side's turn to write a handshake message")
        out = bytearray()
        for token in _PATTERN[self._step]:
            if token == "e":
                if self._e is None:
                    self._e = X25519PrivateKey.generate()
                e_pub = self._e.public_key().public_bytes_raw()
                out += e_pub
                self._sym.mix_hash(e_pub)
            elif token == "s":
                out += self._sym.encrypt_and_hash(self._s_pub)
            else:
                self._mix_dh(token)
        self.payload_hash = self._sym.h
        body = payload(self._sym.h) if callable(payload) else payload
        out += self._sym.encrypt_and_hash(body)
        if len(out) > MAX_NOISE_MESSAGE:
            raise HandshakeError("handshake message too long", field="handshake.payload")
        self._advance()
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """Read the peer's next message and return its (decrypted) payload."""
        if self.my_turn or self.complete:
            raise HandshakeError("unexpected handshake message (replayed or out of order)")
        if len(message) > MAX_NOISE_MESSAGE:
            raise HandshakeError("handshake message too long", field="handshake.message")
        pos = 0
        try:
            for token in _PATTERN[self._step]:
                if token == "e":
                    if len(message) < pos + DHLEN:
                        raise HandshakeError("truncated ephemeral key", field="handshake.e")
                    self._re = bytes(message[pos : pos + DHLEN])
                    pos += DHLEN
                    self._sym.mix_hash(self._re)
                elif token == "s":
                    n = DHLEN + (TAGLEN if self._sym.cipher.has_key else 0)
                    if len(message) < pos + n:
                        raise HandshakeError("truncated static key", field="handshake.s")
                    self.remote_static = self._sym.decrypt_and_hash(bytes(message[pos : pos + n]))
                    pos += n
                else:
                    self._mix_dh(token)
            self.payload_hash = self._sym.h
            rest = bytes(message[pos:])
            if self._sym.cipher.has_key and len(rest) < TAGLEN:
                raise HandshakeError("truncated payload", field="handshake.payload")
            payload = self._sym.decrypt_and_hash(rest)
        except HandshakeError:
            raise
        except WireError as exc:
            raise HandshakeError(
                "handshake message failed authentication (forged, replayed or corrupt)",
                field="handshake",
            ) from exc
        self._advance()
        return payload

    def _mix_dh(self, token: str) -> None:
        assert self._e is not None
        if token == "ee":
            assert self._re is not None
            self._sym.mix_key(_dh(self._e, self._re))
            return
        # es: initiator's e with responder's s; se: initiator's s with responder's e.
        initiator_e = token == "es"
        if self.initiator == initiator_e:
            assert self.remote_static is not None
            self._sym.mix_key(_dh(self._e, self.remote_static))
        else:
            assert self._re is not None
            self._sym.mix_key(_dh(self._s, self._re))

    def _advance(self) -> None:
        self._step += 1
        if self._step == len(_PATTERN):
            c1, c2 = self._sym.split()
            self.handshake_hash = self._sym.h
            self._result = (c1, c2) if self.initiator else (c2, c1)

    def split(self) -> tuple[CipherState, CipherState]:
        """(send, receive) cipher states once the handshake is complete."""
        if self._result is None:
            raise HandshakeError("handshake not complete")
        return self._result


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    """A proven peer and the two directions of the channel keyed by the handshake."""

    peer: PublicIdentity
    send: CipherState
    recv: CipherState
    handshake_hash: bytes
    initiator: bool


def prologue_for(transport_kind: bytes) -> bytes:
    return PROLOGUE_PREFIX + b"\x00" + transport_kind


def auth_signed_data(role: bytes, exchange_key: bytes, handshake_hash: bytes) -> bytes:
    """What each side signs with its Ed25519 key: bound to its X25519 key and this session."""
    return _AUTH_CONTEXT + role + exchange_key + handshake_hash


class LinkHandshake:
    """Noise XX bound to both nodes' identity keys. Sans-IO.

    Initiator: ``start()`` gives message 1; ``receive(msg2)`` gives message 3 and completes.
    Responder: ``receive(msg1)`` gives message 2; ``receive(msg3)`` gives ``b""`` and
    completes. Any bad input raises ``HandshakeError``; the adapter then drops the link.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        initiator: bool,
        transport_kind: bytes,
        expected_peer: NodeAddress | None = None,
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        self._identity = identity
        self._expected = expected_peer
        self._noise = NoiseXX(
            initiator=initiator,
            static=identity.exchange_private,
            prologue=prologue_for(transport_kind),
            ephemeral=ephemeral,
        )
        self._peer: PublicIdentity | None = None
        self._started = False
        self._failed = False

    @property
    def initiator(self) -> bool:
        return self._noise.initiator

    @property
    def complete(self) -> bool:
        return self._noise.complete and self._peer is not None

    @property
    def remote_ephemeral(self) -> bytes | None:
        return self._noise.remote_ephemeral

    def start(self) -> bytes:
        """The initiator's first message (empty payload)."""
        if not self.initiator or self._started:
            raise HandshakeError("start() is for the initiator, once")
        self._started = True
        return self._noise.write_message(b"")

    def receive(self, message: bytes) -> bytes:
        """Consume one handshake message; return the reply to send (``b""`` if none)."""
        if self._failed:
            raise HandshakeError("handshake already failed")
        if self.complete:
            raise HandshakeError("handshake already complete (replayed message?)")
        if self.initiator and not self._started:
            raise HandshakeError("initiator must start() first")
        try:
            return self._receive(message)
        except HandshakeError:
            self._failed = True
            raise

    def _receive(self, message: bytes) -> bytes:
        payload = self._noise.read_message(message)
        step = self._noise.step
        if step == 1:  # responder got message 1: cleartext, must be empty
            if payload:
                raise HandshakeError("first handshake message has a payload", field="msg1")
            return self._noise.write_message(self._auth_payload(b"R"))
        # step 2: initiator got message 2; step 3: responder got message 3
        role = b"R" if self.initiator else b"I"
        self._peer = self._verify(payload, role)
        if self.initiator:
            return self._noise.write_message(self._auth_payload(b"I"))
        return b""

    def _auth_payload(self, role: bytes) -> Callable[[bytes], bytes]:
        ident = self._identity

        def make(h: bytes) -> bytes:
            sig = ident.sign(auth_signed_data(role, ident.public.exchange_key, h))
            return bytes([_AUTH_VERSION]) + ident.public.signing_key + sig

        return make

    def _verify(self, payload: bytes, role: bytes) -> PublicIdentity:
        if len(payload) < _AUTH_LEN or len(payload) > _MAX_AUTH_PAYLOAD:
            raise HandshakeError(
                f"identity proof is {len(payload)} bytes", field="handshake.auth"
            )
        if payload[0] != _AUTH_VERSION:
            raise HandshakeError(
                f"unsupported identity proof version {payload[0]}", field="handshake.auth"
            )
        signing_key = payload[1 : 1 + KEY_LEN]
        signature = payload[1 + KEY_LEN : _AUTH_LEN]
        remote_static = self._noise.remote_static
        assert remote_static is not None
        peer = PublicIdentity(signing_key=signing_key, exchange_key=remote_static)
        signed = auth_signed_data(role, remote_static, self._noise.payload_hash)
        if not peer.verify(signature, signed):
            raise HandshakeError(
                "identity signature does not verify", field="handshake.signature"
            )
        if self._expected is not None and peer.address != self._expected:
            raise HandshakeError(
                f"peer is {peer.address.short}, expected {self._expected.short}",
                field="peer",
            )
        return peer

    def result(self) -> HandshakeResult:
        if not self.complete or self._peer is None:
            raise HandshakeError("handshake not complete")
        send, recv = self._noise.split()
        return HandshakeResult(
            peer=self._peer,
            send=send,
            recv=recv,
            handshake_hash=self._noise.handshake_hash,
            initiator=self.initiator,
        )
