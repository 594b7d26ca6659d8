"""gateway.transport.native_grpc.server against a raw HTTP/2 client on a loopback socket: the
preface, SETTINGS and PING, flow control towards a client with a small window, graceful drain
with two GOAWAYs, and the abuse limits (rapid reset, CONTINUATION flood, HPACK bomb, PING and SETTINGS floods,
too many streams, oversized bodies). Each abuse ends in GOAWAY with ENHANCE_YOUR_CALM or a
REFUSED_STREAM reset, never in a hang or an exception."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from gateway.core.tasks import spawn
from gateway.transport.native_grpc import H2Limits, serve_h2
from gateway.transport.native_grpc import frames as f
from gateway.transport.native_grpc.frames import FrameReader
from gateway.transport.native_grpc.hpack import HpackEncoder
from gateway.transport.native_grpc.server import H2ServerConnection
from gateway.transport.native_grpc.stream import Stream

ENC = HpackEncoder()


class App:
    """/size/N answers N bytes after /wait ms (query-less path: /size/N/wait/MS)."""

    max_body = 4096

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0
        self.too_large = 0

    active = 0

    def call_started(self) -> None:
        self.active += 1

    def call_finished(self) -> None:
        self.active -= 1

    def on_request(self, conn: H2ServerConnection, stream: Stream) -> None:
        stream.handler = spawn(self.serve(conn, stream), "raw")

    def on_body_too_large(self, conn: H2ServerConnection, stream: Stream) -> None:
        self.too_large += 1
        conn.respond(stream, ENC.encode([(":status", "413")]), None, None)

    async def serve(self, conn: H2ServerConnection, stream: Stream) -> None:
        self.started += 1
        parts = dict(stream.headers)[":path"].strip("/").split("/")
        size = int(parts[1]) if len(parts) > 1 else 0
        wait = int(parts[3]) if len(parts) > 3 else 0
        try:
            await asyncio.sleep(wait / 1000)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        conn.respond(stream, ENC.encode([(":status", "200")]), b"d" * size,
                     ENC.encode([("done", "1")]))


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer
        self.frames = FrameReader(max_frame=f.MAX_FRAME_LIMIT)
        self.pending: list[tuple[int, int, int, bytes]] = []

    def send(self, data: bytes) -> None:
        self.w.write(data)

    def request(self, sid: int, path: str, end: bool = True, body: bytes = b"") -> None:
        block = ENC.encode([(":method", "POST"), (":scheme", "http"), (":path", path),
                            (":authority", "t")])
        self.send(f.frame(f.HEADERS, f.END_HEADERS | (f.END_STREAM if end and not body else 0),
                          sid, block))
        if body:
            self.send(f.frame(f.DATA, f.END_STREAM if end else 0, sid, body))

    async def next(self, timeout: float = 5.0) -> tuple[int, int, int, bytes]:
        while not self.pending:
            data = await asyncio.wait_for(self.r.read(65536), timeout)
            if not data:
                raise EOFError("connection closed")
            self.pending += self.frames.feed(data)
        return self.pending.pop(0)

    async def until(self, ftype: int, timeout: float = 5.0) -> tuple[int, int, int, bytes]:
        while True:
            frame = await self.next(timeout)
            if frame[0] == ftype:
                return frame

    async def goaway_code(self) -> int:
        _, _, _, payload = await self.until(f.GOAWAY)
        return f.parse_goaway(payload)[1]


def run(test: Callable[[Client, App, object], Awaitable[None]], limits: H2Limits | None = None,
        preface: bytes = f.PREFACE, client_settings: dict[int, int] | None = None) -> None:
    async def main() -> None:
        app = App()
        listener = await serve_h2(app, "127.0.0.1", 0, limits or H2Limits(), HpackEncoder())
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        c = Client(reader, writer)
        c.send(preface + f.settings(client_settings or {}))
        try:
            await asyncio.wait_for(test(c, app, listener), 30)
        finally:
            writer.close()
            await listener.stop(0)

    asyncio.run(main())


def test_settings_and_ping_are_acknowledged() -> None:
    async def t(c: Client, app: App, _: object) -> None:
        ftype, flags, _, payload = await c.until(f.SETTINGS)
        assert flags == 0 and (f.MAX_CONCURRENT_STREAMS, 1000) in f.parse_settings(payload)
        ftype, flags, _, _ = await c.until(f.SETTINGS)
        assert flags == f.ACK
        c.send(f.ping(b"abcdefgh"))
        _, flags, _, payload = await c.until(f.PING)
        assert flags == f.ACK and payload == b"abcdefgh"
    run(t)


def test_bad_preface_is_a_protocol_error() -> None:
    async def t(c: Client, app: App, _: object) -> None:
        assert await c.goaway_code() == f.PROTOCOL_ERROR
    run(t, preface=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_answer_respects_a_small_client_window() -> None:
    async def t(c: Client, app: App, _: object) -> None:
        c.request(1, "/size/50000")
        received = 0
        while received < 1000:
            _, _, _, payload = await c.until(f.DATA)
            received += len(payload)
        assert received == 1000  # the initial window, and not a byte more
        c.send(f.window_update(0, 100_000) + f.window_update(1, 100_000))
        end = False
        while not end:
            ftype, flags, _, payload = await c.next()
            if ftype == f.DATA:
                received += len(payload)
            end = ftype == f.HEADERS and bool(flags & f.END_STREAM)
        assert received == 50_000
    run(t, client_settings={f.INITIAL_WINDOW_SIZE: 1000})


def test_graceful_drain_sends_two_goaways_and_finishes_the_stream() -> None:
    async def t(c: Client, app: App, listener: object) -> None:
        c.request(1, "/size/10/wait/300")
        while app.started == 0:
            await asyncio.sleep(0.01)
        stop = spawn(listener.stop(10), "stop")  # type: ignore[attr-defined]
        _, _, _, payload = await c.until(f.GOAWAY)
        assert f.parse_goaway(payload)[0] == 2**31 - 1
        _, flags, _, ping = await c.until(f.PING)
        c.send(f.ping(ping, ack=True))
        _, _, _, payload = await c.until(f.GOAWAY)
        assert f.parse_goaway(payload)[:2] == (1, f.NO_ERROR)
        _, flags, sid, _ = await c.until(f.DATA)
        assert sid == 1
        _, flags, _, _ = await c.until(f.HEADERS)
        assert flags & f.END_STREAM
        await stop
    run(t)


def test_rapid_reset_is_stopped() -> None:
    async def t(c: Client, app: App, _: object) -> None:
        for i in range(700):
            sid = 1 + 2 * i
            c.request(sid, "/size/1/wait/1000")
            c.send(f.rst_stream(sid, f.CANCEL))
        assert await c.goaway_code() == f.ENHANCE_YOUR_CALM
    run(t, limits=H2Limits(max_resets_per_s=500))


def test_continuation_flood_is_stopped() -> None:
    async def t(c: Client, app: App, _: object) -> None:
        c.send(f.frame(f.HEADERS, 0, 1, ENC.encode([(":method", "POST")])))
        for _ in range(100):
            c.send(f.frame(f.CONTINUATION, 0, 1, ENC.encode([("x-pad", "p" * 100)])))
        assert await c.goaway_code() == f.ENHANCE_YOUR_CALM
    run(t)


def test_hpack_bomb_is_stopped() -> None:
    async def t(c: Client, app: App, _: object) -> None:
        value = b"v" * 4000
        rest = len(value) - 127  # HPACK integer with a 7-bit prefix: 127, then base-128 digits
        entry = b"\x40\x05x-big" + bytes([0x7F, rest % 128 | 0x80, rest // 128]) + value
        bomb = bytes([0x80 | 62]) * 200
        c.send(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 1, entry))
        c.send(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, 3, bomb))
        assert await c.goaway_code() == f.ENHANCE_YOUR_CALM
    run(t)


def test_ping_flood_is_stopped() -> None:
    async def t(c: Client, app: App, _: object) -> None:
        c.send(f.ping(b"12345678") * 1500)
        assert await c.goaway_code() == f.ENHANCE_YOUR_CALM
    run(t)


def test_settings_flood_is_stopped() -> None:
    async def t(c: Client, app: App, _: object) -> None:
        c.send(f.settings({f.MAX_FRAME_SIZE: 16384}) * 1500)
        assert await c.goaway_code() == f.ENHANCE_YOUR_CALM
    run(t)


def test_streams_beyond_the_limit_are_refused() -> None:
    async def t(c: Client, app: App, _: object) -> None:
        for i in range(4):
            c.request(1 + 2 * i, "/size/1/wait/2000")
        _, _, sid, payload = await c.until(f.RST_STREAM)
        assert (sid, f.parse_u32(payload, "rst")) == (7, f.REFUSED_STREAM)
        assert app.started == 3
    run(t, limits=H2Limits(max_concurrent_streams=3))


def test_client_reset_cancels_the_handler() -> None:
    async def t(c: Client, app: App, _: object) -> None:
        c.request(1, "/size/1/wait/5000")
        while app.started == 0:
            await asyncio.sleep(0.01)
        c.send(f.rst_stream(1, f.CANCEL))
        for _ in range(200):
            if app.cancelled:
                break
            await asyncio.sleep(0.01)
        assert app.cancelled == 1
        c.send(f.ping(b"stillok!"))  # the connection lives on
        _, _, _, payload = await c.until(f.PING)
        assert payload == b"stillok!"
    run(t)


def test_oversized_body_is_answered_early_and_reset() -> None:
    async def t(c: Client, app: App, _: object) -> None:
        c.request(1, "/size/1", end=False, body=b"x" * 5000)
        _, _, sid, block = await c.until(f.HEADERS)
        assert sid == 1 and app.too_large == 1
        _, _, sid, payload = await c.until(f.RST_STREAM)
        assert (sid, f.parse_u32(payload, "rst")) == (1, f.NO_ERROR)
        c.send(f.frame(f.DATA, f.END_STREAM, 1, b"late"))  # ignored, not an error
        c.request(3, "/size/2")
        _, _, sid, payload = await c.until(f.DATA)
        assert (sid, payload) == (3, b"dd")
    run(t)


def test_frames_on_idle_streams_are_protocol_errors() -> None:
    async def t(c: Client, app: App, _: object) -> None:
        c.send(f.frame(f.DATA, 0, 9, b"nobody"))
        assert await c.goaway_code() == f.PROTOCOL_ERROR
    run(t)


def test_even_stream_from_client_is_a_protocol_error() -> None:
    async def t(c: Client, app: App, _: object) -> None:
        c.request(2, "/size/1")
        assert await c.goaway_code() == f.PROTOCOL_ERROR
    run(t)


def test_calls_are_counted_from_open_to_close() -> None:
    async def t(c: Client, app: App, _: object) -> None:
        async def until(n: int) -> None:
            for _ in range(200):
                if app.active == n:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"active {app.active}, expected {n}")

        c.request(1, "/size/1", end=False)  # body still to come
        await until(1)
        c.send(f.frame(f.DATA, f.END_STREAM, 1, b"x"))
        await c.until(f.DATA)
        await until(0)
        c.request(3, "/size/1/wait/5000")
        c.request(5, "/size/1/wait/5000")
        await until(2)
        c.send(f.rst_stream(3, f.CANCEL))
        await until(1)
        c.w.close()  # the connection goes: the last one is released too
        await until(0)
    run(t)
