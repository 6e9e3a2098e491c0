"""meshd errors -> canonical gRPC statuses, in the one place that maps them."""

from __future__ import annotations

import grpc
import pytest

from meshd import errors
from meshd.api.errors import status_code, status_detail


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument("x", field="f"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.AddressError("x", field="dst"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ConfigError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.WireError("x"), grpc.StatusCode.DATA_LOSS),
        (errors.MeshdError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_codes(error: errors.MeshdError, code: grpc.StatusCode) -> None:
    assert status_code(error) == code


def test_every_error_class_maps_to_a_real_status() -> None:
    def subclasses(cls: type[errors.MeshdError]) -> list[type[errors.MeshdError]]:
        return [cls, *(s for c in cls.__subclasses__() for s in subclasses(c))]

    for cls in subclasses(errors.MeshdError):
        assert cls.code in grpc.StatusCode.__members__, cls
        instance = cls.__new__(cls)  # some subclasses take extra constructor arguments
        assert status_code(instance).name == cls.code


def test_unknown_or_ok_code_is_internal() -> None:
    class Odd(errors.MeshdError):
        code = "NOT_A_STATUS"

    class Sneaky(errors.MeshdError):
        code = "OK"

    assert status_code(Odd("x")) == grpc.StatusCode.INTERNAL
    assert status_code(Sneaky("x")) == grpc.StatusCode.INTERNAL


def test_detail_names_the_field() -> None:
    assert status_detail(errors.AddressError("checksum mismatch", field="dst")) == (
        "dst: checksum mismatch"
    )
    assert status_detail(errors.NotFound("no such message")) == "no such message"
