"""The one error hierarchy of meshd.

Every error carries a ``code`` naming the canonical gRPC status it maps to (kept as a
string so that the cores never import grpc) and, where a request was at fault, the
``field`` that was wrong, so the API can say exactly what to fix.
"""

from __future__ import annotations


class MeshdError(Exception):
    """Base class: every error meshd raises on purpose derives from it."""

    code = "INTERNAL"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        if self.field is not None and self.field not in self.message:
            return f"{self.field}: {self.message}"
        return self.message


class InvalidArgument(MeshdError):
    """A request or configuration value is malformed; ``field`` names it."""

    code = "INVALID_ARGUMENT"


class NotFound(MeshdError):
    code = "NOT_FOUND"


class AlreadyExists(MeshdError):
    code = "ALREADY_EXISTS"


class PermissionDenied(MeshdError):
    code = "PERMISSION_DENIED"


class FailedPrecondition(MeshdError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(MeshdError):
    """A bounded queue, store or rate limit is full."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(MeshdError):
    code = "UNAVAILABLE"


class DeadlineExceeded(MeshdError):
    code = "DEADLINE_EXCEEDED"


class ConfigError(InvalidArgument):
    """The config file or command line is wrong; ``field`` names the setting."""


class WireError(MeshdError):
    """Bytes from the network that cannot be decoded. Never a bare ValueError."""

    code = "DATA_LOSS"


class FrameDecodeError(WireError):
    """A mesh frame (or one of its bodies) is malformed."""


class AddressError(InvalidArgument):
    """A node address (binary or text form) is malformed or fails its checksum."""


class HandshakeError(WireError):
    """A link handshake failed: bad message, wrong identity, replay, or bad signature."""


class SignatureError(WireError):
    """A signature over a frame (announce, ACK, receipt) does not verify."""


class StoreError(MeshdError):
    """The state database is unreadable, corrupted, or holds a row that does not decode."""

    code = "DATA_LOSS"


class CryptoError(MeshdError):
    """An end-to-end (MLS) operation cannot be done in the current state (unknown or
    expired key package, group left, state from another node...)."""

    code = "FAILED_PRECONDITION"


class UndecryptableError(CryptoError):
    """An incoming MLS message is refused: tampered, replayed, from a wrong epoch, or from
    a sender who is not the member it claims to be."""

    code = "DATA_LOSS"


class EpochAheadError(CryptoError):
    """An MLS message is from a later epoch than the group's: commits are missing. Keep it
    and retry after catching up (``epoch`` is the message's, ``current`` the group's)."""

    def __init__(self, message: str, *, epoch: int, current: int) -> None:
        super().__init__(message, field="message")
        self.epoch = epoch
        self.current = current
