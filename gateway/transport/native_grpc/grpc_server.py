"""The TF Serving gRPC surface on the native HTTP/2 server: streams in, `Call`s to the pipeline,
answers out. The same contract as gateway.transport.compat.grpc_ingress (the grpc.aio one), call for call.

What must always hold: a replica's code, details and trailing metadata reach the client
unchanged; the client's grpc-timeout bounds the call; initial metadata carries
x-infergate-replica, x-infergate-version and x-infergate-cache; an error the gateway answers
itself is a trailers-only answer with the code of the error table; a method outside
/tensorflow.serving. is UNIMPLEMENTED, as a TF Serving server answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from gateway.core.call import Answer, Call
from gateway.core.errors import GatewayError
from gateway.core.memo import BoundedMemo
from gateway.transport.grpc_methods import METHODS
from gateway.transport.ingress import Ingress
from gateway.transport.native_grpc import grpcwire as gw_
from gateway.transport.native_grpc.hpack import Headers, HpackEncoder, encode_field
from gateway.transport.native_grpc.modelspec import GrpcPath, SpecMemo
from gateway.transport.native_grpc.server import H2ServerConnection
from gateway.transport.native_grpc.stream import Stream

log = logging.getLogger("infergate.grpc")

# Request headers that are transport, not call metadata.
_RESERVED = frozenset({"content-type", "te", "grpc-timeout", "grpc-encoding",
                       "grpc-accept-encoding", "content-length", "connection", "host"})
# Answer metadata never replayed as ours.
_NOT_RELAYED = frozenset({"content-type", "content-length", "grpc-encoding",
                          "grpc-accept-encoding", "grpc-status", "grpc-message", "te"})
_MEMO_MAX = 1024
# :path, :method, content-type, grpc-encoding, grpc-timeout, metadata (text), metadata (all)
_Parsed = tuple[str | None, str | None, str | None, str | None, str | None, Mapping[str, str],
                tuple[tuple[str, str], ...]]


class NativeGrpcIngress:
    """An `H2App`: answers the streams of gateway.transport.native_grpc.server connections."""

    def __init__(self, ingress: Ingress, max_message: int, encoder: HpackEncoder,
                 specs: SpecMemo) -> None:
        self.ingress = ingress
        self.specs = specs
        self.max_message = max_message
        self.max_body = self.max_message + 5
        self.enc = encoder
        self._head_200 = encoder.encode([(":status", "200"), ("content-type", "application/grpc")])
        self._ok_trailer = encoder.encode([("grpc-status", "0")])
        self._own = encoder.encode([("x-infergate-replica", ""), ("x-infergate-version", ""),
                                    ("x-infergate-cache", "miss")])
        # whole answer header blocks by (initial metadata, replica, version, cache)
        self._heads: BoundedMemo[tuple[tuple[tuple[str, str], ...], str, int | None, str, str],
                                 bytes] = BoundedMemo(_MEMO_MAX)
        self._parsed: BoundedMemo[Headers, _Parsed] = BoundedMemo(_MEMO_MAX)
        self._md_blocks: BoundedMemo[tuple[tuple[str, str | bytes], ...], bytes] = BoundedMemo(
            _MEMO_MAX)

    # ---- H2App ---------------------------------------------------------------------------

    def call_started(self) -> None:
        self.ingress.call_started()  # the drain waits for calls whose body is still arriving

    def call_finished(self) -> None:
        self.ingress.call_finished()

    def on_request(self, conn: H2ServerConnection, stream: Stream) -> None:
        # Not gateway.core.tasks.spawn: the stream holds its task (`handler`, cancelled by a
        # RST_STREAM) and `_serve` answers its own failures, so spawn's registry and
        # done-callback would be per-call cost for nothing.
        stream.handler = conn.loop.create_task(self._serve(conn, stream))

    def on_body_too_large(self, conn: H2ServerConnection, stream: Stream) -> None:
        self._trailers_only(conn, stream, gw_.RESOURCE_EXHAUSTED,
                            f"Received message larger than max ({stream.size} vs. "
                            f"{self.max_message})")

    # ---- one call ------------------------------------------------------------------------

    async def _serve(self, conn: H2ServerConnection, stream: Stream) -> None:
        t0 = time.monotonic()
        parsed = self._parsed.get(stream.headers)
        if parsed is None:
            parsed = self._parse(stream.headers)
        path, method_, ctype, encoding, timeout, md, received = parsed
        if method_ != "POST" or path is None:
            self._trailers_only(conn, stream, gw_.INTERNAL, "gRPC calls use POST with a :path")
            return
        if ctype is None or not ctype.startswith("application/grpc"):
            conn.respond(stream, encode_field(":status", "415"), None, None)
            return
        method = METHODS.get(path)
        if method is None:
            if not path.startswith("/tensorflow.serving."):
                self._trailers_only(conn, stream, gw_.UNIMPLEMENTED, "Method not found!")
                return
            method = "other"
        try:
            body = gw_.unframe(stream.body(), encoding, self.max_message)
        except gw_.MessageError as exc:
            self._trailers_only(conn, stream, exc.code, str(exc))
            return
        deadline = None
        if timeout is not None:
            secs = gw_.parse_timeout(timeout)
            if secs is not None:
                deadline = t0 + secs
        target = GrpcPath(path)
        target.body = body
        target.spec_end = -1
        target.wire_metadata = received
        spec = None
        if method not in ("other", "reload"):
            spec, target.spec_end = self.specs.spec(body, method == "multi_inference")
        if spec is None or not spec.name:
            call = Call("grpc", method if method == "reload" else "other", None, None, None, "", md,
                        body, deadline, target)
        else:
            call = Call("grpc", method, spec.name, spec.version, spec.label, spec.signature, md,
                        body, deadline, target)
        call.peer = conn.peer
        result = await self.ingress.answer(call, t0)
        if isinstance(result, GatewayError):
            self._own_error(conn, stream, result.code.value[0], result.message)
        else:
            self._reply(conn, stream, result)

    def _parse(self, headers: Headers) -> _Parsed:
        """The request head in the pieces a call needs. Header lists repeat (the decoder
        returns the same tuple for a repeated block), so the result is remembered by it; the
        metadata mapping is therefore shared between calls, read-only as Call.headers is."""
        path = method_ = ctype = encoding = timeout = None
        md: dict[str, str] = {}  # one text value per name: what routing reads
        received: list[tuple[str, str]] = []  # everything, in order: what the replica gets
        for k, v in headers:
            if k[0] == ":":
                if k == ":path":
                    path = v
                elif k == ":method":
                    method_ = v
            elif k in _RESERVED:
                if k == "content-type":
                    ctype = v
                elif k == "grpc-timeout":
                    timeout = v
                elif k == "grpc-encoding":
                    encoding = v
            else:
                received.append((k, v))
                if not k.endswith("-bin"):
                    md[k] = v
        parsed = (path, method_, ctype, encoding, timeout, MappingProxyType(md), tuple(received))
        return self._parsed.put(headers, parsed)

    def _reply(self, conn: H2ServerConnection, stream: Stream, a: Answer) -> None:
        key = (tuple(a.headers), a.replica, a.version, a.cache, a.tier)
        head = self._heads.get(key)
        if head is None:
            head = self._heads.put(key, self._head_200 + self._metadata(key[0]) + self._tail(a))
        if a.status == 0:
            trailer = self._ok_trailer
            data: bytes | None = gw_.frame_message(a.body)
        else:
            trailer = self.enc.field("grpc-status", str(a.status))
            if a.details:
                trailer += encode_field("grpc-message", gw_.percent_encode(a.details))
            data = None
        if a.trailers:
            trailer += self._metadata(a.trailers)
        conn.respond(stream, head, data, trailer)

    def _metadata(self, pairs: Iterable[tuple[str, str | bytes]]) -> bytes:
        """Metadata pairs as a header block fragment, remembered per list of pairs (replicas
        send the same few lists over and over)."""
        key = tuple(pairs)
        if not key:
            return b""
        enc = self._md_blocks.get(key)
        if enc is not None:
            return enc
        out = []
        for k, v in key:
            if k in _NOT_RELAYED or k[0] == ":" or k.startswith("x-infergate-"):
                continue
            if isinstance(v, bytes):
                v = gw_.encode_bin(v)
            out.append(encode_field(k, v))
        return self._md_blocks.put(key, b"".join(out))

    @staticmethod
    def _tail(a: Answer) -> bytes:
        """The x-infergate-* initial metadata (remembered with the whole head by `_reply`)."""
        return b"".join((
            encode_field("x-infergate-replica", a.replica),
            encode_field("x-infergate-version", "" if a.version is None else str(a.version)),
            encode_field("x-infergate-cache", a.cache),
            encode_field("x-infergate-tier", a.tier)))

    def _own_error(self, conn: H2ServerConnection, stream: Stream, code: int,
                   message: str) -> None:
        """An error the gateway answers itself: initial metadata saying so (no replica, no
        version, no cache), then the status in the trailers."""
        trailer = self.enc.field("grpc-status", str(code))
        if message:
            trailer += encode_field("grpc-message", gw_.percent_encode(message[:1024]))
        conn.respond(stream, self._head_200 + self._own, None, trailer)

    def _trailers_only(self, conn: H2ServerConnection, stream: Stream, code: int,
                       message: str) -> None:
        block = self._head_200 + self.enc.field("grpc-status", str(code))
        if message:
            block += encode_field("grpc-message", gw_.percent_encode(message[:1024]))
        conn.respond(stream, block, None, None)
