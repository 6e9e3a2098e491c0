"""The encrypted link channel that follows the handshake.

Choice (brief, issue 3): a mesh frame can be ``MAX_FRAME_LEN`` (64 KiB + 46) bytes, more
than one Noise transport message (65535 bytes, Noise §3). Rather than splitting frames
over several Noise messages, every frame is one length-prefixed record
(``meshd.transports.framing``) sealed with ONE ChaCha20-Poly1305 operation under the
``CipherState`` keys from the handshake's ``Split()``: 64-bit counter nonces exactly as
Noise transport messages, the 4-byte record header as associated data (so record type and
length are authenticated). Both directions rekey (Noise §11.3, ``REKEY``) after every
``rekey_every`` records; both ends count records, so no signalling is needed.

Records are ordered and lossless below us (TCP; BLE/WiFi transports deliver records in
order or drop the link), so the receiver's nonce is simply its record count: a replayed,
dropped or reordered record fails authentication and the link is torn down.
"""

from __future__ import annotations

from meshd.crypto.handshake import CipherState
from meshd.errors import WireError
from meshd.transports.framing import TAG_LEN, encode_header

# 2**20 records (~1 GiB at 1 KiB frames) per key: frequent enough to limit what one key
# protects, rare enough that the rekey cost (one AEAD op + key setup) is invisible.
DEFAULT_REKEY_EVERY = 1 << 20


class SecureChannel:
    """Seal and open records on one link; not thread-safe (one event loop)."""

    __slots__ = ("_recv", "_recv_count", "_rekey_every", "_send", "_send_count")

    def __init__(
        self, send: CipherState, recv: CipherState, *, rekey_every: int = DEFAULT_REKEY_EVERY
    ) -> None:
        if not send.has_key or not recv.has_key:
            raise WireError("channel needs keyed cipher states", field="cipher")
        if rekey_every < 1:
            raise WireError("rekey interval must be positive", field="rekey_every")
        self._send = send
        self._recv = recv
        self._rekey_every = rekey_every
        self._send_count = 0
        self._recv_count = 0

    @property
    def sent(self) -> int:
        return self._send.n

    @property
    def received(self) -> int:
        return self._recv.n

    def seal(self, record_type: int, plaintext: bytes) -> tuple[bytes, bytes]:
        """Return ``(header, ciphertext)``; write both (``writelines`` avoids a concat)."""
        header = encode_header(record_type, len(plaintext) + TAG_LEN)
        ciphertext = self._send.encrypt_with_ad(header, plaintext)
        self._send_count += 1
        if self._send_count >= self._rekey_every:
            self._send_count = 0
            self._send.rekey()
        return header, ciphertext

    def open(self, header: bytes, ciphertext: bytes) -> bytes:
        """Authenticate and decrypt one record; ``WireError`` if it was tampered with."""
        if len(ciphertext) < TAG_LEN:
            raise WireError("record shorter than its tag", field="record.length")
        plaintext = self._recv.decrypt_with_ad(header, ciphertext)
        self._recv_count += 1
        if self._recv_count >= self._rekey_every:
            self._recv_count = 0
            self._recv.rekey()
        return plaintext
