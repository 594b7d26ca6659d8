"""Typed serving errors and the one table mapping them to gRPC codes and HTTP statuses.

Every failure the replica reports is a ``ServingError`` carrying a gRPC status code and TF Serving's
message text. The REST layer turns it into ``{"error": "<message>"}`` with the HTTP status TF Serving
uses for that code (model_servers/http_server.cc); the gRPC layer aborts with the code and the
message cut to 1024 characters as TF Serving's ToGRPCStatus does.
"""

from __future__ import annotations

import grpc

from gateway.core.errors import CODE_BY_VALUE, GRPC_TO_HTTP

# One table for the whole project: the gateway's (gRPC code -> HTTP status, as
# tensorflow_model_server maps them).
_HTTP_STATUS = GRPC_TO_HTTP
_BY_NUMBER = CODE_BY_VALUE

# TF Serving cuts gRPC error messages at this many characters (grpc_status_util.cc).
GRPC_MESSAGE_LIMIT = 1024


class ServingError(Exception):
    """A request failed with a gRPC status code and TF Serving's message for it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return http_status(self.code)

    @property
    def code_name(self) -> str:
        """The name TF Serving's metrics use for this code, e.g. "NOT_FOUND"."""
        return str(self.code.name)

    def grpc_message(self) -> str:
        if len(self.message) > GRPC_MESSAGE_LIMIT:
            return self.message[:GRPC_MESSAGE_LIMIT] + "...TRUNCATED"
        return self.message

    def status_string(self) -> str:
        """absl::Status::ToString(): "INVALID_ARGUMENT: message" (used inside nested messages)."""
        return f"{self.code.name}: {self.message}"


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP_STATUS.get(code, 500)


def code_from_number(number: int) -> grpc.StatusCode:
    """A gRPC code from its number (TensorFlow's error codes share gRPC's numbering)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def invalid_argument(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def failed_precondition(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.FAILED_PRECONDITION, message)


def unavailable(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNAVAILABLE, message)


def internal(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INTERNAL, message)


def unimplemented(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.UNIMPLEMENTED, message)


def deadline_exceeded(message: str = "Deadline Exceeded") -> ServingError:
    return ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, message)
