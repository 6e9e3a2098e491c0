"""The app envelope: what a DATA frame's payload carries between two nodes' apps.

Layout (version 1, see docs/wire-format.md "App envelope")::

    0        version   u8 = 1
    1        app_len   u8, 1..64
    2        app_id    app_len bytes, ASCII [a-z0-9._-]
    2+len    content   the app's bytes, to the end of the payload

A message sent by app X is delivered to app X on the destination node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshd.errors import FrameDecodeError, InvalidArgument

ENVELOPE_VERSION = 1
MAX_APP_ID_LEN = 64
_APP_ID_RE = re.compile(r"[a-z0-9._-]{1,64}")


def validate_app_id(app_id: str, *, field: str = "app_id") -> str:
    """Return ``app_id`` when well formed, else raise InvalidArgument naming ``field``."""
    if not isinstance(app_id, str) or not _APP_ID_RE.fullmatch(app_id):
        raise InvalidArgument(
            f"app id must be 1..{MAX_APP_ID_LEN} characters of [a-z0-9._-], got {app_id!r}",
            field=field,
        )
    return app_id


@dataclass(frozen=True, slots=True)
class Envelope:
    app_id: str
    content: bytes

    def encode(self) -> bytes:
        app = validate_app_id(self.app_id).encode("ascii")
        return bytes((ENVELOPE_VERSION, len(app))) + app + self.content


def decode_envelope(data: bytes) -> Envelope:
    """Decode a DATA payload; raise FrameDecodeError (naming the field) when malformed."""
    if len(data) < 2:
        raise FrameDecodeError("app envelope shorter than 2 bytes", field="envelope")
    if data[0] != ENVELOPE_VERSION:
        raise FrameDecodeError(f"unsupported app envelope version {data[0]}", field="version")
    app_len = data[1]
    if not 1 <= app_len <= MAX_APP_ID_LEN or len(data) < 2 + app_len:
        raise FrameDecodeError(f"bad app id length {app_len}", field="app_id")
    raw = bytes(data[2 : 2 + app_len])
    try:
        app_id = validate_app_id(raw.decode("ascii"))
    except (UnicodeDecodeError, InvalidArgument) as exc:
        raise FrameDecodeError(f"malformed app id {raw!r}", field="app_id") from exc
    return Envelope(app_id, bytes(data[2 + app_len :]))
