"""Exceptions raised by kvstash, one class per status code.

Every error the service or the client reports carries a status code whose value is the gRPC
status code (``kvstash.errors.KvStashError.code``; e.g. 5 = NOT_FOUND) and a message. The
classes below mirror the codes KVStash uses (docs/api.md); any other code raises the base
class :class:`KvStashError`.
"""

from __future__ import annotations

from typing import Dict, Optional, Type

# gRPC status code values (grpc/status.h, absl::StatusCode).
CODE_NAMES: Dict[int, str] = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}


class KvStashError(Exception):
    """A failed KVStash call. ``code`` is the gRPC status code (int), ``code_name`` its name."""

    code: int = 2

    def __init__(self, message: str = "", code: Optional[int] = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    @property
    def code_name(self) -> str:
        return CODE_NAMES.get(self.code, str(self.code))

    def __str__(self) -> str:
        return f"{self.code_name}: {self.message}"


class Cancelled(KvStashError):
    code = 1


class InvalidArgument(KvStashError, ValueError):
    code = 3


class DeadlineExceeded(KvStashError, TimeoutError):
    code = 4


class NotFound(KvStashError, KeyError):
    code = 5

    def __str__(self) -> str:  # KeyError would quote the message
        return KvStashError.__str__(self)


class AlreadyExists(KvStashError):
    code = 6


class PermissionDenied(KvStashError):
    code = 7


class ResourceExhausted(KvStashError):
    code = 8


class FailedPrecondition(KvStashError):
    code = 9


class Aborted(KvStashError):
    code = 10


class OutOfRange(KvStashError):
    code = 11


class Unimplemented(KvStashError):
    code = 12


class Internal(KvStashError):
    code = 13


class Unavailable(KvStashError, ConnectionError):
    code = 14


class DataLoss(KvStashError):
    code = 15


class Unauthenticated(KvStashError):
    code = 16


_BY_CODE: Dict[int, Type[KvStashError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def error_class(code: int) -> Type[KvStashError]:
    """The exception class for a status code (KvStashError for codes without their own)."""
    return _BY_CODE.get(code, KvStashError)


def from_status(code: int, message: str) -> KvStashError:
    """The exception object for a non-OK status (not raised)."""
    cls = error_class(code)
    if cls is KvStashError:
        return KvStashError(message, code)
    return cls(message)


__all__ = ["KvStashError", "CODE_NAMES", "error_class", "from_status"] + [
    c.__name__ for c in _BY_CODE.values()
]
