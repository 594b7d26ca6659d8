"""Typed gateway errors and the one table that maps them to gRPC codes and HTTP statuses.

Errors raised by the gateway itself (not relayed from a replica) are instances of `GatewayError`.
Each carries a gRPC status code; the HTTP status follows TF Serving's own mapping
(TFSERVING.md), and the REST body is TF Serving's shape: {"error": "<message>"}.
Messages never carry a stack trace or an internal address.
"""

from __future__ import annotations

import math

import grpc
import orjson

# TF Serving's mapping of gRPC codes to HTTP statuses (util/status_util / http_rest_api_handler).
GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

CODE_BY_VALUE: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}

# TF Serving cuts error messages longer than this.
MAX_MESSAGE = 1024


class GatewayError(Exception):
    """An error the gateway answers itself."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message[:MAX_MESSAGE]

    @property
    def http_status(self) -> int:
        return GRPC_TO_HTTP.get(self.code, 500)

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """HTTP headers the REST answer carries besides the gateway's own (e.g. Retry-After)."""
        return ()

    def rest_body(self) -> bytes:
        return rest_error_body(self.message)


class BadRequest(GatewayError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(GatewayError):
    code = grpc.StatusCode.NOT_FOUND


class NoReplica(GatewayError):
    """No healthy replica has the requested model version AVAILABLE."""

    code = grpc.StatusCode.UNAVAILABLE


class ReplicaUnavailable(GatewayError):
    """A replica could not be reached or dropped the call (connection-level failure)."""

    code = grpc.StatusCode.UNAVAILABLE


class ConnectFailed(ReplicaUnavailable):
    """The connection to a replica could not be opened (refused, unreachable, connect timeout):
    the request never left, so any call may go to another replica, and the replica is down."""


class TryTimedOut(ReplicaUnavailable):
    """A replica did not answer within the per-try timeout (the call's deadline has time left)."""


class DeadlineExceeded(GatewayError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Overloaded(GatewayError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class BrownedOut(Overloaded):
    """Not an error a client sees: the call was moved to its model's fallback tier because its
    pool is in brownout (the primary serves it when no tier can)."""


class RateLimited(Overloaded):
    """Over a tenant's limit (or too many failed keys from one client): 429 with Retry-After,
    RESOURCE_EXHAUSTED over gRPC. Never charged to the retry budget: nothing was sent."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return (("retry-after", str(max(1, math.ceil(self.retry_after_s)))),)


class PermissionDenied(GatewayError):
    code = grpc.StatusCode.PERMISSION_DENIED


class PayloadTooLarge(GatewayError):
    """Body over the configured limit. REST answers 413; gRPC RESOURCE_EXHAUSTED."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    @property
    def http_status(self) -> int:
        return 413


class Unauthenticated(GatewayError):
    code = grpc.StatusCode.UNAUTHENTICATED


def rest_error_body(message: str) -> bytes:
    """TF Serving's REST error shape."""
    return orjson.dumps({"error": message[:MAX_MESSAGE]})
