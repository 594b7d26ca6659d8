"""gateway.transport.native_rest.server over real loopback sockets: framing, keep-alive, pipelining order,
chunked and Content-Length bodies, Expect: 100-continue, the body and head limits, slow clients
and a client that goes away. The app under test echoes what the framing layer handed it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.transport.native_rest import HttpRequest, ServerLimits, serve_http
from gateway.transport.native_rest.http1 import Response, header_lines


class EchoApp:
    """Answers with the request as JSON; a path of /sleep/N waits N ms first."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.started = asyncio.Event()
        self.draining = False
        self.active = 0

    def call_started(self) -> None:
        self.active += 1

    def call_finished(self) -> None:
        self.active -= 1

    async def handle(self, req: HttpRequest) -> Response:
        if req.target.startswith("/sleep/"):
            self.started.set()
            try:
                await asyncio.sleep(int(req.target.split("/")[2]) / 1000)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        body = orjson.dumps({"method": req.method, "target": req.target, "headers": req.headers,
                             "body": req.body.decode("latin-1")})
        return 200, header_lines([("Content-Type", "application/json")]), body

    def reject(self, status: int, message: str) -> Response:
        return status, header_lines([("Content-Type", "application/json")]), \
            orjson.dumps({"error": message})


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    line = await reader.readline()
    assert line, "connection closed before an answer"
    status = int(line.split()[1])
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


def run(test: Callable[[int, EchoApp], Awaitable[None]], limits: ServerLimits | None = None) -> None:
    async def main() -> None:
        app = EchoApp()
        server = await serve_http(app, "127.0.0.1", 0, limits or ServerLimits())
        port = server.sockets[0].getsockname()[1]
        try:
            await asyncio.wait_for(test(port, app), 10)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def echo(body: bytes) -> Any:
    return orjson.loads(body)


def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async def t(port: int, app: EchoApp) -> None:
        r, w = await connect(port)
        for i in range(3):
            w.write(f"POST /v1/x{i} HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                    f"X-Mixed-Case: V{i}\r\n\r\nhello".encode())
            status, headers, body = await read_response(r)
            assert status == 200 and "connection" not in headers
            e = echo(body)
            assert e["target"] == f"/v1/x{i}" and e["body"] == "hello"
            assert e["headers"]["x-mixed-case"] == f"V{i}"
        w.close()
    run(t)


def test_pipelined_requests_are_answered_in_order() -> None:
    async def t(port: int, app: EchoApp) -> None:
        r, w = await connect(port)
        # The first takes longest; answers must still come back in request order.
        w.write(b"GET /sleep/150 HTTP/1.1\r\nHost: a\r\n\r\n"
                b"GET /sleep/1 HTTP/1.1\r\nHost: a\r\n\r\n"
                b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n")
        targets = [echo((await read_response(r))[2])["target"] for _ in range(3)]
        assert targets == ["/sleep/150", "/sleep/1", "/third"]
        w.close()
    run(t)


def test_chunked_request_body_is_reassembled() -> None:
    async def t(port: int, app: EchoApp) -> None:
        r, w = await connect(port)
        w.write(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        status, _, body = await read_response(r)
        assert status == 200 and echo(body)["body"] == "hello world"
        w.close()
    run(t)


def test_expect_100_continue_is_answered_before_the_body() -> None:
    async def t(port: int, app: EchoApp) -> None:
        r, w = await connect(port)
        w.write(b"POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        assert await r.readline() == b"HTTP/1.1 100 Continue\r\n"
        assert await r.readline() == b"\r\n"
        w.write(b"data")
        status, _, body = await read_response(r)
        assert status == 200 and echo(body)["body"] == "data"
        w.close()
    run(t)


def test_declared_body_over_the_limit_is_refused_without_100_continue() -> None:
    async def t(port: int, app: EchoApp) -> None:
        r, w = await connect(port)
        w.write(b"POST /big HTTP/1.1\r\nHost: a\r\nContent-Length: 101\r\n"
                b"Expect: 100-continue\r\n\r\n")
        status, headers, body = await read_response(r)
        assert status == 413 and headers["connection"] == "close"
        assert "exceeds the limit of 100 bytes" in orjson.loads(body)["error"]
        assert await r.read() == b""  # closed
    run(t, ServerLimits(max_body=100))


def test_chunked_body_crossing_the_limit_is_refused() -> None:
    async def t(port: int, app: EchoApp) -> None:
        r, w = await connect(port)
        w.write(b"POST /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            w.write(b"28\r\n" + b"x" * 40 + b"\r\n")
        status, _, body = await read_response(r)
        assert status == 413 and "exceeds the limit" in orjson.loads(body)["error"]
    run(t, ServerLimits(max_body=100))


def test_oversized_head_is_refused_with_431() -> None:
    async def t(port: int, app: EchoApp) -> None:
        r, w = await connect(port)
        w.write(b"GET /h HTTP/1.1\r\nHost: a\r\nX-Big: " + b"y" * 3000 + b"\r\n\r\n")
        status, _, _ = await read_response(r)
        assert status == 431
    run(t, ServerLimits(max_head=1024))


def test_malformed_request_gets_400_and_close() -> None:
    async def t(port: int, app: EchoApp) -> None:
        r, w = await connect(port)
        w.write(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
        status, headers, _ = await read_response(r)
        assert status == 400 and headers["connection"] == "close"
    run(t)


def test_slow_head_is_timed_out_with_408() -> None:
    async def t(port: int, app: EchoApp) -> None:
        r, w = await connect(port)
        w.write(b"GET /slow HTTP/1.1\r\nHost: a\r\n")  # never finishes the head
        status, _, _ = await read_response(r)
        assert status == 408
        assert await r.read() == b""
    run(t, ServerLimits(header_timeout_s=0.3))


def test_idle_keep_alive_connection_is_closed() -> None:
    async def t(port: int, app: EchoApp) -> None:
        r, w = await connect(port)
        w.write(b"GET /once HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(r))[0] == 200
        assert await asyncio.wait_for(r.read(), 3) == b""
    run(t, ServerLimits(idle_timeout_s=0.3))


def test_http10_and_connection_close_end_the_connection() -> None:
    async def t(port: int, app: EchoApp) -> None:
        for req in (b"GET /a HTTP/1.0\r\n\r\n",
                    b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"):
            r, w = await connect(port)
            w.write(req)
            status, headers, _ = await read_response(r)
            assert status == 200 and headers["connection"] == "close"
            assert await r.read() == b""
            w.close()
    run(t)


def test_client_going_away_cancels_its_request() -> None:
    async def t(port: int, app: EchoApp) -> None:
        r, w = await connect(port)
        w.write(b"GET /sleep/5000 HTTP/1.1\r\nHost: a\r\n\r\n")
        await app.started.wait()
        w.close()
        for _ in range(100):
            if app.cancelled:
                break
            await asyncio.sleep(0.02)
        assert app.cancelled == 1
    run(t)


def test_head_request_gets_no_body() -> None:
    async def t(port: int, app: EchoApp) -> None:
        r, w = await connect(port)
        w.write(b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        line = await r.readline()
        assert line.startswith(b"HTTP/1.1 200")
        while (await r.readline()) != b"\r\n":
            pass
        # The next bytes are the second answer, not a body for HEAD.
        status, _, body = await read_response(r)
        assert status == 200 and echo(body)["target"] == "/after"
    run(t)


def test_draining_answers_close_their_connection() -> None:
    async def t(port: int, app: EchoApp) -> None:
        r, w = await connect(port)
        w.write(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
        assert "connection" not in (await read_response(r))[1]
        app.draining = True
        w.write(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, _ = await read_response(r)
        assert status == 200 and headers["connection"] == "close"
        assert await r.read() == b""
    run(t)


def test_calls_are_counted_from_head_to_answer() -> None:
    async def t(port: int, app: EchoApp) -> None:
        r, w = await connect(port)
        w.write(b"POST /c HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab")
        for _ in range(100):
            if app.active:
                break
            await asyncio.sleep(0.01)
        assert app.active == 1  # counted while its body is still arriving
        w.write(b"cd")
        assert (await read_response(r))[0] == 200
        assert app.active == 0
        w.write(b"GET /sleep/5000 HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n")
        await app.started.wait()
        assert app.active == 2
        w.close()  # gone: both are released
        for _ in range(100):
            if app.active == 0:
                break
            await asyncio.sleep(0.01)
        assert app.active == 0
    run(t)
