"""Reading and rewriting the ModelSpec of gRPC requests on the native path, memoised.

gateway.core.wire defines the semantics (field 1 of the request; repeated occurrences merge; the
rewrite sets the version and drops the label). Profiles of the native gRPC path showed
wire.read_spec plus wire.rewrite_version costing more than the whole HTTP/2 layer per call,
because each walks every top-level field in Python. Here the common layout (one ModelSpec, as
the first field, which is how every protobuf serializer writes it) is recognised with one short
scan, and the spec's decoding and its rewrite are remembered by the spec's bytes: clients send
the same few specs over and over. Any other layout goes to gateway.core.wire unchanged.

What must always hold: the answers equal gateway.core.wire's for every input (the unit tests compare
them on generated messages); the memos are bounded.
"""

from __future__ import annotations

from gateway.core.memo import BoundedMemo
from gateway.core.wire import ModelSpec, WireError, read_spec, rewrite_version

_MEMO_MAX = 1024


class GrpcPath(str):
    """The method path of a native gRPC call (what Call.extra holds for gRPC, so any gRPC
    forwarder can use it as the path), plus where the request's leading ModelSpec field ends."""

    body: bytes  # the request body the offset belongs to
    spec_end: int  # end of the leading field 1 in `body`, or -1: use gateway.core.wire
    wire_metadata: tuple[tuple[str, str], ...]  # the caller's metadata as received, in order


def leading_spec_end(body: bytes) -> int:
    """End offset of field 1 when it is the first field and no other field 1 follows; -1 when
    the layout is anything else (or malformed: gateway.core.wire then says what is wrong)."""
    n = len(body)
    if n < 2 or body[0] != 0x0A:
        return -1
    length, pos = _varint(body, 1)
    end = pos + length
    if length < 0 or end > n:
        return -1
    p = end
    while p < n:
        tag = body[p]
        if tag >= 0x80:
            return -1  # field numbers above 15: not in TF Serving requests; let wire decide
        p += 1
        if tag >> 3 == 1 or tag >> 3 == 0:
            return -1
        wt = tag & 7
        if wt == 2:
            length, p = _varint(body, p)
            if length < 0:
                return -1
            p += length
        elif wt == 0:
            _, p = _varint(body, p)
        elif wt == 1:
            p += 8
        elif wt == 5:
            p += 4
        else:
            return -1
        if p < 0:
            return -1
    return end if p == n else -1


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); (-1, -1) when truncated or longer than 10 bytes."""
    result = 0
    shift = 0
    n = len(buf)
    while pos < n and shift < 70:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    return -1, -1


class SpecMemo:
    def __init__(self) -> None:
        self._specs: BoundedMemo[bytes, ModelSpec | None] = BoundedMemo(_MEMO_MAX)
        self._rewrites: BoundedMemo[tuple[bytes, int], bytes] = BoundedMemo(_MEMO_MAX)

    def spec(self, body: bytes, multi: bool) -> tuple[ModelSpec | None, int]:
        """The request's ModelSpec (None: none, or unreadable) and the leading-field end
        offset for `rewrite` (-1: not the common layout)."""
        if multi:
            return _safe_read(body, True), -1
        end = leading_spec_end(body)
        if end < 0:
            return _safe_read(body, False), -1
        key = body[:end]
        try:
            return self._specs[key], end
        except KeyError:
            pass
        return self._specs.put(key, _safe_read(key, False)), end

    def rewrite(self, body: bytes, end: int, version: int, multi: bool, model: str) -> bytes:
        """gateway.core.wire.rewrite_version, using the offset from `spec` when there is one."""
        if end < 0 or multi:
            return rewrite_version(body, version, multi=multi, model=model)
        key = (body[:end], version)
        field = self._rewrites.get(key)
        if field is None:
            field = self._rewrites.put(key, rewrite_version(key[0], version))
        return field + body[end:]


def _safe_read(body: bytes, multi: bool) -> ModelSpec | None:
    try:
        return read_spec(body, multi=multi)
    except WireError:
        return None  # the replica answers a malformed request itself
