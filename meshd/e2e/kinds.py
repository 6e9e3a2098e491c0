"""The first byte of every DATA payload: which end-to-end sub-protocol owns the rest.

Ranges, so the 1:1 session layer and the group layer evolve independently:

* ``0x01`` the version-1 plaintext app envelope (``meshd.envelope``) of meshd <= 0.1.
  Refused on receipt since user messages must be end-to-end encrypted.
* ``0x10..0x1F`` 1:1 sessions, key packages and connection requests (``meshd.e2e`` session
  modules).
* ``0x20..0x2F`` groups (``meshd.e2e`` group modules).

Every other value is refused as unknown.
"""

from __future__ import annotations

import enum

PLAINTEXT_ENVELOPE_V1 = 0x01
SESSION_FIRST, SESSION_LAST = 0x10, 0x1F
GROUP_FIRST, GROUP_LAST = 0x20, 0x2F


class PayloadFamily(enum.Enum):
    PLAINTEXT = "plaintext"
    SESSION = "session"
    GROUP = "group"
    UNKNOWN = "unknown"


def family_of(payload: bytes) -> PayloadFamily:
    """Which layer owns ``payload`` (UNKNOWN for an empty or unassigned first byte)."""
    if not payload:
        return PayloadFamily.UNKNOWN
    kind = payload[0]
    if kind == PLAINTEXT_ENVELOPE_V1:
        return PayloadFamily.PLAINTEXT
    if SESSION_FIRST <= kind <= SESSION_LAST:
        return PayloadFamily.SESSION
    if GROUP_FIRST <= kind <= GROUP_LAST:
        return PayloadFamily.GROUP
    return PayloadFamily.UNKNOWN
