"""The gRPC `Forwarder` on the native HTTP/2 client: a `Call` in, an `Answer` out, over one
multiplexed connection per replica (more when the replica limits concurrent streams).

Same contract as gateway.transport.compat.upstream.GrpcForwarder: the request bytes go
through untouched except the ModelSpec version; the answer's code, details, initial and
trailing metadata come back as the replica sent them (binary metadata as bytes, like
grpcio); a connection-level failure is ReplicaUnavailable, a replica's own status is an Answer.

What must always hold: a stream the replica did not process (above its GOAWAY's last stream
id, or refused) is sent again on a fresh connection, so a replica's graceful restart loses no
call; the deadline travels as grpc-timeout and is also enforced here (RST_STREAM CANCEL).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

from gateway.core.call import Answer, Call, Upstream
from gateway.core.errors import ConnectFailed, DeadlineExceeded, ReplicaUnavailable
from gateway.core.memo import BoundedMemo
from gateway.transport.native_grpc import grpcwire as g
from gateway.transport.native_grpc.client import (
    BodyTooLarge,
    ConnectionLost,
    DeadlineExpired,
    H2ClientPool,
    StreamReset,
    Unprocessed,
)
from gateway.transport.native_grpc.hpack import Headers
from gateway.transport.native_grpc.modelspec import GrpcPath, SpecMemo
from gateway.transport.native_grpc.stream import H2Limits, Stream

# Call metadata the transport owns (never forwarded as metadata).
_SKIP = frozenset({"user-agent", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
                   "content-type", "te", "content-length", "connection", "host",
                   "keep-alive", "transfer-encoding", "upgrade", "proxy-connection"})
# Answer headers that are transport, not metadata.
_TRANSPORT = frozenset({"content-type", "grpc-encoding", "grpc-accept-encoding", "grpc-status",
                        "grpc-message", "te"})
_MAX_RESENDS = 3
Metadata = tuple[tuple[str, str | bytes], ...]
_MEMO_MAX = 1024


class NativeGrpcForwarder:
    def __init__(self, max_message: int, limits: H2Limits | None = None,
                 specs: SpecMemo | None = None) -> None:
        self._max = max_message
        self.specs = specs or SpecMemo()
        # Upstream streams are ours; the replica's window decides how fast we send.
        self.pool = H2ClientPool(limits or H2Limits(), max_message + 5)
        self._enc = self.pool.encoder
        self._prefix: BoundedMemo[tuple[str, str], bytes] = BoundedMemo(_MEMO_MAX)
        self._heads: BoundedMemo[Headers, tuple[str, str | None, tuple[tuple[str, str], ...]]] = (
            BoundedMemo(_MEMO_MAX))
        self._tails: BoundedMemo[Headers, tuple[int, str, Metadata]] = BoundedMemo(_MEMO_MAX)

    def _head(self, path: str, addr: str, timeout: float,
              metadata: Iterable[tuple[str, str | bytes]]) -> bytes:
        key = (path, addr)
        prefix = self._prefix.get(key)
        if prefix is None:
            prefix = self._prefix.put(key, self._enc.encode([
                (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", addr),
                ("content-type", "application/grpc"), ("te", "trailers")]))
        field = self._enc.field
        # Whole milliseconds, rounded up (the deadline is enforced here too): few distinct
        # values, so the field's encoding is usually remembered.
        parts = [prefix, field("grpc-timeout", g.encode_timeout_ms(timeout))]
        for k, v in metadata:
            if k not in _SKIP and k[0] != ":":
                parts.append(field(k, g.encode_bin(v) if isinstance(v, bytes) else v))
        return b"".join(parts)

    async def send(self, call: Call, replica: Upstream, version: int | None,
                   timeout: float) -> Answer:
        addr = replica.cfg.grpc
        if addr is None:
            raise ReplicaUnavailable(f"replica {replica.name} has no gRPC address")
        path: str = call.extra  # type: ignore[assignment]
        body = call.body
        if version is not None and call.model is not None and call.method != "status":
            end = -1
            if isinstance(path, GrpcPath) and path.body is body:
                end = path.spec_end
            body = self.specs.rewrite(body, end, version, call.method == "multi_inference",
                                      call.model)
        # The caller's metadata as received (binary values, repeated names, order) when the
        # ingress kept it; else the text metadata routing saw.
        metadata: Iterable[tuple[str, str | bytes]] = (
            getattr(path, "wire_metadata", None) or getattr(path, "metadata", None)
            or call.headers.items())
        # time.monotonic, and the connection's own loop below: looking up the running loop
        # costs a getpid() system call per lookup on Python 3.11.
        deadline = time.monotonic() + timeout
        message = g.frame_message(body)
        for _ in range(_MAX_RESENDS):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded("Deadline Exceeded")
            conn = self.pool.ready(addr)
            if conn is None:
                try:
                    conn = await self.pool.connection(addr)
                except (OSError, TimeoutError) as exc:
                    raise ConnectFailed(
                        f"replica {replica.name} unreachable: {type(exc).__name__}") from None
            stream = conn.request(self._head(path, addr, remaining, metadata), message, deadline)
            try:
                await stream.waiter
            except Unprocessed:
                continue
            except DeadlineExpired:
                conn.cancel(stream)
                raise DeadlineExceeded("Deadline Exceeded") from None
            except asyncio.CancelledError:
                conn.cancel(stream)
                raise
            except StreamReset as exc:
                return Answer(g.RST_TO_GRPC.get(exc.code, g.INTERNAL), b"", [], (),
                              f"Stream removed (code {exc.code})", replica=replica.name,
                              version=version)
            except ConnectionLost:
                raise ReplicaUnavailable(f"replica {replica.name} dropped the connection") from None
            except BodyTooLarge:
                return Answer(g.RESOURCE_EXHAUSTED, b"", [], (),
                              f"Received message larger than max ({self._max})",
                              replica=replica.name, version=version)
            return self._answer(stream, replica.name, version)
        raise ReplicaUnavailable(f"replica {replica.name} kept refusing the call")

    def _answer(self, stream: Stream, replica: str, version: int | None) -> Answer:
        head = self._heads.get(stream.headers)
        if head is None:
            head = self._parse_head(stream.headers)
        status, encoding, initial = head
        trailers = stream.trailers
        trailers_only = any(k == ":status" for k, _ in trailers)  # pseudo: not a trailer
        if status != "200":
            code = g.HTTP_TO_GRPC.get(int(status) if status.isdigit() else 0, g.UNKNOWN)
            return Answer(code, b"", [] if trailers_only else list(initial), (),
                          f"Received http2 header with status: {status}", replica=replica,
                          version=version)
        tail = self._tails.get(trailers)
        if tail is None:
            tail = self._parse_trailers(trailers)
        code, details, trailing = tail
        answer_initial = [] if trailers_only else list(initial)
        if code != 0:
            return Answer(code, b"", answer_initial, trailing, details, replica=replica,
                          version=version)
        try:
            body = g.unframe(stream.body(), encoding, self._max)
        except g.MessageError as exc:
            return Answer(exc.code, b"", answer_initial, trailing, str(exc), replica=replica,
                          version=version)
        return Answer(0, body, answer_initial, trailing, replica=replica, version=version)

    # Answer heads and trailers repeat (the decoder returns the same tuple for a repeated
    # block), so their reading is remembered by the tuple.

    def _parse_head(self, headers: Headers) -> tuple[str, str | None, tuple[tuple[str, str], ...]]:
        status = ""
        encoding = None
        initial: list[tuple[str, str]] = []
        for k, v in headers:
            if k[0] == ":":
                if k == ":status":
                    status = v
            elif k == "grpc-encoding":
                encoding = v
            elif k not in _TRANSPORT:
                initial.append((k, v))
        return self._heads.put(headers, (status, encoding, tuple(initial)))

    def _parse_trailers(self, trailers: Headers) -> tuple[int, str, Metadata]:
        code_s = None
        details = ""
        trailing: list[tuple[str, str | bytes]] = []
        for k, v in trailers:
            if k == "grpc-status":
                code_s = v
            elif k == "grpc-message":
                details = g.percent_decode(v)
            elif k[0] == ":" or k in _TRANSPORT:
                continue
            elif k.endswith("-bin"):
                trailing.append((k, g.decode_bin(v)))
            else:
                trailing.append((k, v))
        if code_s is None or not code_s.isdigit():
            tail = (g.UNKNOWN, "missing grpc-status", tuple(trailing))
        else:
            tail = (int(code_s), details, tuple(trailing))
        return self._tails.put(trailers, tail)

    def retryable(self, answer: Answer) -> bool:
        # CANCELLED from a replica means it cut the call off (it is shutting down: the gateway's
        # own cancellations never come back as answers), as good as UNAVAILABLE for a retry.
        return answer.status == g.UNAVAILABLE or answer.status == g.CANCELLED

    async def close(self) -> None:
        self.pool.close()

