"""The REST `Forwarder` on the native keep-alive pool: a `Call` in, an `Answer` out.

Same contract as gateway.transport.compat.upstream.RestForwarder: the path carries the resolved version, the
body goes through byte for byte (gzip included, with its Content-Encoding), hop-by-hop headers
stay behind, and only Content-Type and Content-Encoding of the answer are relayed.
"""

from __future__ import annotations

from gateway.core.call import IDEMPOTENT, Answer, Call, Upstream
from gateway.core.errors import ConnectFailed, DeadlineExceeded, ReplicaUnavailable
from gateway.core.memo import BoundedMemo
from gateway.core.wire import RestRequest, upstream_path
from gateway.transport.headers import HOP_BY_HOP, RELAYED
from gateway.transport.native_rest.pool import ConnectError, HostPool, UpstreamError, UpstreamTimeout

RELAY = frozenset(RELAYED)
_NO_BODY = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
# Request heads repeat (a client sends the same path and headers call after call): the encoded
# request line and header lines are remembered by what they are made of.
_HEADS_MAX = 512
_HeadKey = tuple[str, str, str, int | None, tuple[tuple[str, str], ...]]


class NativeRestForwarder:
    def __init__(self, idle_timeout_s: float = 30.0) -> None:
        self._pool = HostPool(RELAY, idle_timeout_s=idle_timeout_s)
        self._host_lines: dict[str, bytes] = {}
        self._heads: BoundedMemo[_HeadKey, bytes] = BoundedMemo(_HEADS_MAX)

    async def send(self, call: Call, replica: Upstream, version: int | None,
                   timeout: float) -> Answer:
        addr = replica.cfg.rest
        if addr is None:
            raise ReplicaUnavailable(f"replica {replica.name} has no REST address")
        req: RestRequest = call.extra  # type: ignore[assignment]
        body = call.body
        method = req.http_method
        # The upstream path is a function of (method, path, query, version): the routable
        # target is parsed from the first two.
        items = tuple(call.headers.items())
        key = (method, req.raw_path, req.query, version, items)
        block = self._heads.get(key)
        if block is None:
            lines = [f"{method} {upstream_path(req, version)} HTTP/1.1\r\n"]
            lines += [f"{k}: {v}\r\n" for k, v in items if k not in HOP_BY_HOP]
            block = self._heads.put(key, "".join(lines).encode("latin-1"))
        host = self._host_lines.get(addr)
        if host is None:
            host = self._host_lines[addr] = f"Host: {addr}\r\n\r\n".encode("latin-1")
        if body or method not in _NO_BODY:
            head = b"%sContent-Length: %d\r\n%s" % (block, len(body), host)
        else:
            head = block + host
        may_resend = call.method in IDEMPOTENT or method == "GET"
        try:
            resp = await self._pool.request(addr, head, body, timeout, head_only=method == "HEAD",
                                            may_resend=may_resend)
        except UpstreamTimeout:
            raise DeadlineExceeded("Deadline Exceeded") from None
        except ConnectError as exc:
            raise ConnectFailed(f"replica {replica.name} unreachable: {exc}") from None
        except UpstreamError as exc:
            raise ReplicaUnavailable(f"replica {replica.name} unreachable: {exc}") from None
        return Answer(resp.status, resp.body, resp.headers, replica=replica.name, version=version)

    def retryable(self, answer: Answer) -> bool:
        return answer.status == 503

    async def close(self) -> None:
        self._pool.close()
