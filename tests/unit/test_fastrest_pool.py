"""gateway.transport.native_rest.pool and .forwarder against scripted replicas on real loopback sockets:
keep-alive reuse, a replica closing an idle connection under a request, timeouts, chunked,
close-delimited and interim answers, malformed answers, and what the forwarder puts on the wire."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Awaitable, Callable

import pytest

from gateway.config import Replica
from gateway.core.call import Call
from gateway.core.errors import DeadlineExceeded, ReplicaUnavailable
from gateway.core.wire import RestRequest, parse_rest_path
from gateway.fleet.replicas import ReplicaState
from gateway.transport.native_rest.forwarder import NativeRestForwarder
from gateway.transport.native_rest.pool import HostPool, UpstreamError, UpstreamTimeout

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nServer: x\r\nContent-Length: 2\r\n\r\n{}"
RELAY = frozenset({"content-type", "content-encoding"})


class Script:
    """A replica whose behaviour per request is a function of (connection no., request no.)."""

    def __init__(self, answer: Callable[[int, int, bytes], bytes | None]) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = self.connections
        self.connections += 1
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                req = head + (await reader.readexactly(length) if length else b"")
                self.requests.append(req)
                out = self.answer(conn, n, req)
                n += 1
                if out is None:  # close without answering
                    writer.close()
                    return
                if out == b"hang":
                    await asyncio.sleep(3600)
                writer.write(out)
                await writer.drain()
                if out.startswith(b"HTTP/1.0"):  # an answer delimited by closing
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def run(answer: Callable[[int, int, bytes], bytes | None],
        test: Callable[[str, Script], Awaitable[None]]) -> None:
    async def main() -> None:
        script = Script(answer)
        server = await asyncio.start_server(script.serve, "127.0.0.1", 0)
        addr = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            await asyncio.wait_for(test(addr, script), 10)
        finally:
            server.close()

    asyncio.run(main())


GET = b"GET /v1/models/m HTTP/1.1\r\nHost: x\r\n\r\n"


def test_connections_are_reused() -> None:
    async def t(addr: str, s: Script) -> None:
        pool = HostPool(RELAY)
        for _ in range(5):
            resp = await pool.request(addr, GET, b"", 5.0)
            assert resp.status == 200 and resp.body == b"{}"
            assert resp.headers == [("content-type", "application/json")]  # Server not relayed
        assert s.connections == 1
        pool.close()
    run(lambda c, n, r: OK, t)


def test_idle_close_race_is_resent_on_a_fresh_connection() -> None:
    # The replica drops its first connection when the second request arrives on it.
    async def t(addr: str, s: Script) -> None:
        pool = HostPool(RELAY)
        assert (await pool.request(addr, GET, b"", 5.0)).status == 200
        assert (await pool.request(addr, GET, b"", 5.0)).status == 200
        assert s.connections == 2
        pool.close()
    run(lambda c, n, r: None if (c, n) == (0, 1) else OK, t)


def test_no_resend_when_not_allowed() -> None:
    async def t(addr: str, s: Script) -> None:
        pool = HostPool(RELAY)
        await pool.request(addr, GET, b"", 5.0)
        with pytest.raises(UpstreamError):
            await pool.request(addr, GET, b"", 5.0, may_resend=False)
        pool.close()
    run(lambda c, n, r: None if (c, n) == (0, 1) else OK, t)


def test_fresh_connection_closed_without_answer_is_an_error() -> None:
    async def t(addr: str, s: Script) -> None:
        pool = HostPool(RELAY)
        with pytest.raises(UpstreamError):
            await pool.request(addr, GET, b"", 5.0)
        assert s.connections == 1  # never resent: the replica may have acted on it
    run(lambda c, n, r: None, t)


def test_timeout_closes_the_connection() -> None:
    async def t(addr: str, s: Script) -> None:
        pool = HostPool(RELAY)
        with pytest.raises(UpstreamTimeout):
            await pool.request(addr, GET, b"", 0.2)
        # The late connection is not reused: the next request opens a new one.
        s.answer = lambda c, n, r: OK
        assert (await pool.request(addr, GET, b"", 5.0)).status == 200
        assert s.connections == 2
        pool.close()
    run(lambda c, n, r: b"hang", t)


def test_a_reused_connection_times_out_at_its_new_request_deadline() -> None:
    # The connection's deadline timer was armed for the first request's far deadline; the
    # second request, on the same connection, must still fail at its own near one.
    async def t(addr: str, s: Script) -> None:
        pool = HostPool(RELAY)
        assert (await pool.request(addr, GET, b"", 8.0)).status == 200
        t0 = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await pool.request(addr, GET, b"", 0.3)
        assert time.monotonic() - t0 < 5.0  # its own deadline, not the first one's 8 s
        assert s.connections == 1  # the second request went out on the reused connection
        pool.close()
    run(lambda c, n, r: OK if n == 0 else b"hang", t)


def test_chunked_answer_is_reassembled() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")

    async def t(addr: str, s: Script) -> None:
        pool = HostPool(RELAY)
        assert (await pool.request(addr, GET, b"", 5.0)).body == b"abcdefg"
        assert (await pool.request(addr, GET, b"", 5.0)).body == b"abcdefg"
        assert s.connections == 1
        pool.close()
    run(lambda c, n, r: chunked, t)


def test_close_delimited_answer_is_complete_at_eof() -> None:
    async def t(addr: str, s: Script) -> None:
        pool = HostPool(RELAY)
        resp = await pool.request(addr, GET, b"", 5.0)
        assert resp.status == 503 and resp.body == b"until the end"
        pool.close()
    run(lambda c, n, r: b"HTTP/1.0 503 Service Unavailable\r\n\r\nuntil the end", t)


def test_interim_100_continue_is_skipped() -> None:
    async def t(addr: str, s: Script) -> None:
        pool = HostPool(RELAY)
        resp = await pool.request(addr, GET, b"", 5.0)
        assert resp.status == 200 and resp.body == b"{}"
        pool.close()
    run(lambda c, n, r: b"HTTP/1.1 100 Continue\r\n\r\n" + OK, t)


def test_malformed_answer_is_an_error() -> None:
    async def t(addr: str, s: Script) -> None:
        pool = HostPool(RELAY)
        with pytest.raises(UpstreamError):
            await pool.request(addr, GET, b"", 5.0)
        pool.close()
    run(lambda c, n, r: b"NOT HTTP AT ALL\r\n\r\n", t)


def test_refused_connection_is_an_error() -> None:
    async def main() -> None:
        pool = HostPool(RELAY)
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(UpstreamError):
            await pool.request(f"127.0.0.1:{port}", GET, b"", 5.0)
    asyncio.run(main())


def _call(method: str, path: str, body: bytes, headers: dict[str, str]) -> Call:
    target = parse_rest_path(method, path)
    assert target is not None
    return Call("rest", target.verb, target.model, target.version, target.label, "", headers,
                body, None, RestRequest(method, path, "a=1", target))


def test_forwarder_wire_format() -> None:
    body = gzip.compress(b'{"instances": [1.0]}')

    async def t(addr: str, s: Script) -> None:
        fwd = NativeRestForwarder()
        replica = ReplicaState(Replica(name="r1", rest=addr))
        call = _call("POST", "/v1/models/m/labels/stable:predict", body,
                     {"content-encoding": "gzip", "content-type": "application/json",
                      "connection": "keep-alive", "host": "gw", "content-length": "99",
                      "transfer-encoding": "chunked", "x-user": "u1"})
        answer = await fwd.send(call, replica, 7, 5.0)
        assert answer.status == 200 and answer.replica == "r1" and answer.version == 7
        sent = s.requests[0]
        head, _, sent_body = sent.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /v1/models/m/versions/7:predict?a=1 HTTP/1.1"
        names = [ln.split(b":")[0].lower() for ln in lines[1:]]
        assert sorted(names) == sorted([b"content-encoding", b"content-type", b"x-user",
                                        b"content-length", b"host"])
        assert f"Host: {addr}".encode() in lines
        assert sent_body == body  # gzip bytes passed through untouched
        await fwd.close()
    run(lambda c, n, r: OK, t)


def test_forwarder_maps_failures_to_gateway_errors() -> None:
    async def t(addr: str, s: Script) -> None:
        fwd = NativeRestForwarder()
        replica = ReplicaState(Replica(name="r1", rest=addr))
        with pytest.raises(DeadlineExceeded):
            await fwd.send(_call("GET", "/v1/models/m", b"", {}), replica, None, 0.2)
        s.answer = lambda c, n, r: None
        with pytest.raises(ReplicaUnavailable):
            await fwd.send(_call("GET", "/v1/models/m", b"", {}), replica, None, 5.0)
        await fwd.close()
    run(lambda c, n, r: b"hang", t)
