"""The native HTTP/2 layer against grpcio, both ways, over real loopback sockets:
- grpc.aio clients calling a gateway.transport.native_grpc server (unary calls, 12 MB messages each way, error
  statuses with details and binary trailing metadata, deadlines and cancellation reaching the
  handler, many concurrent streams on one connection);
- the gateway.transport.native_grpc gRPC forwarder calling a grpc.aio server (the same, plus the server's
  graceful shutdown), and a server that sends GOAWAY under an unanswered stream (the call is
  sent again on a new connection and not lost)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from gateway.config import Replica
from gateway.core.call import Call
from gateway.core.deadlines import SLACK_S
from gateway.core.errors import DeadlineExceeded, ReplicaUnavailable
from gateway.core.tasks import spawn
from gateway.fleet.replicas import ReplicaState
from gateway.transport.native_grpc import H2Limits, NativeGrpcForwarder, serve_h2
from gateway.transport.native_grpc import frames as f
from gateway.transport.native_grpc import grpcwire as g
from gateway.transport.native_grpc.hpack import HpackEncoder
from gateway.transport.native_grpc.server import H2ServerConnection
from gateway.transport.native_grpc.stream import Stream

BIG = 12 * 1024 * 1024
OPTS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


class EchoApp:
    """A gRPC server app on gateway.transport.native_grpc.server: /t.Echo/{Echo,Big,Error,Sleep,GoAway}."""

    max_body = 64 << 20

    def __init__(self) -> None:
        self.enc = HpackEncoder()
        self.cancelled = 0
        self.calls = 0
        self.goaway_once = False

    active = 0

    def call_started(self) -> None:
        self.active += 1

    def call_finished(self) -> None:
        self.active -= 1

    def on_request(self, conn: H2ServerConnection, stream: Stream) -> None:
        stream.handler = spawn(self.serve(conn, stream), "echo")

    def on_body_too_large(self, conn: H2ServerConnection, stream: Stream) -> None:
        conn.respond(stream, self.enc.encode([(":status", "200"), ("grpc-status", "8")]), None,
                     None)

    async def serve(self, conn: H2ServerConnection, stream: Stream) -> None:
        self.calls += 1
        headers = dict(stream.headers)
        path = headers[":path"]
        msg = g.unframe(stream.body(), headers.get("grpc-encoding"), self.max_body)
        head = self.enc.encode([(":status", "200"), ("content-type", "application/grpc"),
                                ("x-initial", "yes")])
        if path.endswith("/GoAway") and self.goaway_once and stream.id > 1:
            # Promise only stream 1, leave this one unanswered: the client must resend it.
            self.goaway_once = False
            conn._write(f.goaway(1, f.NO_ERROR))
            return
        if path.endswith("/Sleep"):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        if path.endswith("/Error"):
            trailer = self.enc.encode([("grpc-status", str(g.INVALID_ARGUMENT)),
                                       ("grpc-message", g.percent_encode("bad input: é 100%")),
                                       ("x-detail-bin", g.encode_bin(b"\x00\x01\xff")),
                                       ("x-plain", "p")])
            conn.respond(stream, head, None, trailer)
            return
        out = b"z" * BIG if path.endswith("/Big") else msg
        conn.respond(stream, head, g.frame_message(out),
                     self.enc.encode([("grpc-status", "0"), ("x-trailer", "t")]))


def with_server(test: Callable[[str, EchoApp], Awaitable[None]]) -> None:
    async def main() -> None:
        app = EchoApp()
        enc = HpackEncoder()
        listener = await serve_h2(app, "127.0.0.1", 0, H2Limits(), enc)
        try:
            await asyncio.wait_for(test(f"127.0.0.1:{listener.port}", app), 60)
        finally:
            await listener.stop(0)

    asyncio.run(main())


# ---- grpcio clients -> gateway.transport.native_grpc server ------------------------------------

def test_grpcio_client_unary_and_metadata() -> None:
    async def t(addr: str, app: EchoApp) -> None:
        async with grpc.aio.insecure_channel(addr, options=OPTS) as ch:
            call = ch.unary_unary("/t.Echo/Echo")(b"hello", timeout=10)
            assert await call == b"hello"
            assert ("x-initial", "yes") in list(await call.initial_metadata())
            assert ("x-trailer", "t") in list(await call.trailing_metadata())
            assert await call.code() == grpc.StatusCode.OK
    with_server(t)


def test_grpcio_client_large_messages_both_ways() -> None:
    async def t(addr: str, app: EchoApp) -> None:
        async with grpc.aio.insecure_channel(addr, options=OPTS) as ch:
            payload = bytes(range(256)) * (BIG // 256)
            assert await ch.unary_unary("/t.Echo/Echo")(payload, timeout=30) == payload
            assert len(await ch.unary_unary("/t.Echo/Big")(b"", timeout=30)) == BIG
    with_server(t)


def test_grpcio_client_sees_error_status_details_and_trailers() -> None:
    async def t(addr: str, app: EchoApp) -> None:
        async with grpc.aio.insecure_channel(addr) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await ch.unary_unary("/t.Echo/Error")(b"x", timeout=10)
            err = exc.value
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.details() == "bad input: é 100%"
            md = dict(err.trailing_metadata() or ())
            assert md["x-detail-bin"] == b"\x00\x01\xff" and md["x-plain"] == "p"
    with_server(t)


def test_grpcio_deadline_and_cancellation_reach_the_handler() -> None:
    async def t(addr: str, app: EchoApp) -> None:
        async with grpc.aio.insecure_channel(addr) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await ch.unary_unary("/t.Echo/Sleep")(b"x", timeout=0.3)
            assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            call = ch.unary_unary("/t.Echo/Sleep")(b"x", timeout=10)
            await asyncio.sleep(0.3)
            call.cancel()
            for _ in range(100):
                if app.cancelled == 2:
                    break
                await asyncio.sleep(0.02)
            assert app.cancelled == 2  # both RST_STREAMs cancelled their handlers
    with_server(t)


def test_grpcio_many_concurrent_streams_on_one_connection() -> None:
    async def t(addr: str, app: EchoApp) -> None:
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = ch.unary_unary("/t.Echo/Echo")
            got = await asyncio.gather(*(stub(str(i).encode(), timeout=20) for i in range(300)))
            assert got == [str(i).encode() for i in range(300)]
    with_server(t)


# ---- gateway.transport.native_grpc forwarder -> grpc.aio server --------------------------------

class GrpcServer:
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.server = grpc.aio.server(options=OPTS)
        self.server.add_generic_rpc_handlers((self,))  # type: ignore[arg-type]
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def service(self, details: Any) -> Any:
        method: str = details.method

        async def handler(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self.handle(method, request, context)
        return grpc.unary_unary_rpc_method_handler(handler)

    async def handle(self, method: str, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        md = dict(context.invocation_metadata() or ())
        await context.send_initial_metadata((("x-initial", md.get("x-forward", "")),))
        if method.endswith("/Error"):
            context.set_trailing_metadata((("x-detail-bin", b"\x00\x02"), ("x-plain", "p")))
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: ü")
        if method.endswith("/Sleep"):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        if method.endswith("/Big"):
            return b"q" * BIG
        context.set_trailing_metadata((("x-trailer", "t"),))
        return request


def forward(test: Callable[[NativeGrpcForwarder, ReplicaState, GrpcServer], Awaitable[None]]) -> None:
    async def main() -> None:
        srv = GrpcServer()
        await srv.server.start()
        fwd = NativeGrpcForwarder(64 << 20)
        replica = ReplicaState(Replica(name="r1", grpc=f"127.0.0.1:{srv.port}"))
        try:
            await asyncio.wait_for(test(fwd, replica, srv), 60)
        finally:
            await fwd.close()
            await srv.server.stop(0)

    asyncio.run(main())


def call(path: str, body: bytes, headers: dict[str, str] | None = None) -> Call:
    return Call("grpc", "other", None, None, None, "", headers or {}, body, None, path)


def test_forwarder_unary_with_metadata_both_ways() -> None:
    async def t(fwd: NativeGrpcForwarder, replica: ReplicaState, srv: GrpcServer) -> None:
        a = await fwd.send(call("/t.Echo/Echo", b"ping", {"x-forward": "fw"}), replica, None, 10)
        assert (a.status, a.body) == (0, b"ping")
        assert ("x-initial", "fw") in a.headers and ("x-trailer", "t") in a.trailers
    forward(t)


def test_forwarder_large_messages_both_ways() -> None:
    async def t(fwd: NativeGrpcForwarder, replica: ReplicaState, srv: GrpcServer) -> None:
        payload = bytes(range(256)) * (BIG // 256)
        a = await fwd.send(call("/t.Echo/Echo", payload), replica, None, 30)
        assert a.status == 0 and a.body == payload
        a = await fwd.send(call("/t.Echo/Big", b""), replica, None, 30)
        assert a.status == 0 and len(a.body) == BIG
    forward(t)


def test_forwarder_relays_error_status_details_and_binary_trailers() -> None:
    async def t(fwd: NativeGrpcForwarder, replica: ReplicaState, srv: GrpcServer) -> None:
        a = await fwd.send(call("/t.Echo/Error", b"x"), replica, None, 10)
        assert a.status == grpc.StatusCode.NOT_FOUND.value[0]
        assert a.details == "no such thing: ü"
        assert ("x-detail-bin", b"\x00\x02") in a.trailers and ("x-plain", "p") in a.trailers
    forward(t)


def test_forwarder_deadline_cancels_the_upstream_call() -> None:
    async def t(fwd: NativeGrpcForwarder, replica: ReplicaState, srv: GrpcServer) -> None:
        # Whichever end's timer fires first: ours raises, the server's is its own status.
        try:
            a = await fwd.send(call("/t.Echo/Sleep", b"x"), replica, None, 0.3)
            assert a.status == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        except DeadlineExceeded:
            pass
        await asyncio.wait_for(srv.cancelled.wait(), 5)
        a = await fwd.send(call("/t.Echo/Echo", b"after"), replica, None, 10)
        assert a.body == b"after"  # the connection is still good
    forward(t)


def test_forwarder_deadlines_sharing_one_connection_each_end_on_time() -> None:
    """The streams of one upstream connection share its deadline timer. A call with a later
    deadline arms it first; calls with earlier deadlines must still fail at theirs, not at the
    later one (the app here never answers /Sleep within the test)."""
    async def t(addr: str, app: EchoApp) -> None:
        fwd = NativeGrpcForwarder(64 << 20)
        replica = ReplicaState(Replica(name="r1", grpc=addr))

        async def timed(deadline: float) -> float:
            t0 = time.monotonic()
            with pytest.raises(DeadlineExceeded):
                await fwd.send(call("/t.Echo/Sleep", b"x"), replica, None, deadline)
            return time.monotonic() - t0

        try:
            long = spawn(fwd.send(call("/t.Echo/Sleep", b"x"), replica, None, 8.0), "long")
            await asyncio.sleep(0.1)
            took = await asyncio.gather(timed(0.5), timed(0.25))
            assert took[0] >= 0.5 - SLACK_S and took[1] >= 0.25 - SLACK_S
            assert not long.done()  # ended by their own deadlines, not the 8 s one
            assert len(fwd.pool._conns[addr]) == 1  # all three shared one connection
            long.cancel()
            with pytest.raises(asyncio.CancelledError):
                await long
            a = await fwd.send(call("/t.Echo/Echo", b"after"), replica, None, 5)
            assert a.body == b"after"  # the connection is still good
        finally:
            await fwd.close()
    with_server(t)


def test_forwarder_cancellation_resets_the_upstream_stream() -> None:
    async def t(fwd: NativeGrpcForwarder, replica: ReplicaState, srv: GrpcServer) -> None:
        task = spawn(fwd.send(call("/t.Echo/Sleep", b"x"), replica, None, 30), "sleepy")
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.wait_for(srv.cancelled.wait(), 5)
    forward(t)


def test_forwarder_to_nothing_is_replica_unavailable() -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again: nothing listens there
        fwd = NativeGrpcForwarder(1 << 20)
        replica = ReplicaState(Replica(name="r1", grpc=f"127.0.0.1:{port}"))
        with pytest.raises(ReplicaUnavailable):
            await fwd.send(call("/t.Echo/Echo", b"x"), replica, None, 5)
        await fwd.close()
    asyncio.run(main())


def test_forwarder_resends_a_stream_above_the_goaway_last_id() -> None:
    async def t(addr: str, app: EchoApp) -> None:
        fwd = NativeGrpcForwarder(1 << 20)
        replica = ReplicaState(Replica(name="r1", grpc=addr))
        a = await fwd.send(call("/t.Echo/GoAway", b"first"), replica, None, 10)  # stream 1
        app.goaway_once = True
        a = await fwd.send(call("/t.Echo/GoAway", b"second"), replica, None, 10)  # stream 3
        assert (a.status, a.body) == (0, b"second")
        assert app.calls == 3  # stream 3 reached the app, was not answered, and was resent
        await fwd.close()
    with_server(t)
