"""Read and rewrite the routing part of TF Serving requests without decoding the rest.

gRPC: every routable request carries a ModelSpec in field 1 (for MultiInference, inside each
task of field 1). ModelSpec: name = 1 (string), version = 2 (google.protobuf.Int64Value whose
value is field 1), signature_name = 3 (string), version_label = 4 (string). We parse only the
protobuf wire format of that field; everything else is forwarded byte for byte.

REST: TF Serving's path grammar, matched case-insensitively.

What must always hold: a rewrite changes only the ModelSpec (name, signature and unknown fields
are kept; version set, label dropped) and leaves every other byte of the request as it was.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from gateway.core.errors import BadRequest

# Protobuf wire types.
VARINT, I64, LEN, I32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def encode_varint(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1  # int64 negatives are ten-byte varints
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def iter_fields(buf: bytes) -> list[tuple[int, int, int, int, int]]:
    """Split a message into (field, wire_type, start, value_start, end) tuples.

    For LEN fields the payload is buf[value_start:end]; for VARINT fields value_start is where
    the varint begins. Raises WireError on malformed input.
    """
    out: list[tuple[int, int, int, int, int]] = []
    pos = 0
    n = len(buf)
    while pos < n:
        start = pos
        tag, pos = read_varint(buf, pos)
        field, wt = tag >> 3, tag & 7
        if field == 0:
            raise WireError("field number 0")
        if wt == VARINT:
            vstart = pos
            _, pos = read_varint(buf, pos)
        elif wt == LEN:
            length, vstart = read_varint(buf, pos)
            pos = vstart + length
            if pos > n:
                raise WireError("truncated length-delimited field")
        elif wt == I64:
            vstart = pos
            pos += 8
        elif wt == I32:
            vstart = pos
            pos += 4
        else:
            raise WireError(f"unsupported wire type {wt}")
        if pos > n:
            raise WireError("truncated field")
        out.append((field, wt, start, vstart, pos))
    return out


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    version: int | None = None
    label: str | None = None
    signature: str = ""


def _decode_spec(payload: bytes) -> ModelSpec:
    name = ""
    version: int | None = None
    label: str | None = None
    signature = ""
    for field, wt, _s, vs, end in iter_fields(payload):
        if field == 1 and wt == LEN:
            name = _utf8(payload[vs:end])
        elif field == 2 and wt == LEN:
            version = 0  # an Int64Value present with no value field means 0
            for f2, wt2, _s2, vs2, _e2 in iter_fields(payload[vs:end]):
                if f2 == 1 and wt2 == VARINT:
                    v, _ = read_varint(payload[vs:end], vs2)
                    version = v - (1 << 64) if v >= 1 << 63 else v
            label = None  # oneof: the last one set wins
        elif field == 3 and wt == LEN:
            signature = _utf8(payload[vs:end])
        elif field == 4 and wt == LEN:
            label = _utf8(payload[vs:end])
            version = None
    return ModelSpec(name, version, label, signature)


def _utf8(b: bytes) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError("string field is not valid UTF-8") from exc


def _spec_payloads(body: bytes) -> tuple[list[tuple[int, int, int, int, int]], bytes | None]:
    fields = iter_fields(body)
    spec_parts = [body[vs:end] for f, wt, _s, vs, end in fields if f == 1 and wt == LEN]
    # Protobuf merges repeated occurrences of a singular message field; concatenation merges.
    return fields, (b"".join(spec_parts) if spec_parts else None)


def read_spec(body: bytes, multi: bool = False) -> ModelSpec | None:
    """The ModelSpec of a request, or None when it has none. Raises WireError when malformed.

    With `multi` (MultiInferenceRequest), the spec of the first task is returned.
    """
    fields, payload = _spec_payloads(body)
    if multi:
        tasks = [body[vs:end] for f, wt, _s, vs, end in fields if f == 1 and wt == LEN]
        if not tasks:
            return None
        _, payload = _spec_payloads(tasks[0])
    if payload is None:
        return None
    return _decode_spec(payload)


def encode_spec_with_version(payload: bytes, version: int) -> bytes:
    """Re-encode a ModelSpec payload with `version` set and any label dropped."""
    out = bytearray()
    for field, _wt, start, _vs, end in iter_fields(payload):
        if field in (2, 4):
            continue
        out += payload[start:end]
    inner = b"\x08" + encode_varint(version) if version != 0 else b""
    out += b"\x12" + encode_varint(len(inner)) + inner
    return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return encode_varint(field << 3 | LEN) + encode_varint(len(payload)) + payload


def _rewrite_single(body: bytes, version: int) -> bytes:
    fields, payload = _spec_payloads(body)
    new_spec = _len_field(1, encode_spec_with_version(payload or b"", version))
    rest = b"".join(body[s:e] for f, wt, s, _vs, e in fields if not (f == 1 and wt == LEN))
    return new_spec + rest


def rewrite_version(body: bytes, version: int, multi: bool = False, model: str | None = None) -> bytes:
    """Return `body` with its ModelSpec naming `version` explicitly (label dropped).

    For MultiInference every task whose model is `model` is rewritten; other tasks are kept.
    """
    if not multi:
        return _rewrite_single(body, version)
    out = bytearray()
    for f, wt, s, vs, e in iter_fields(body):
        if f == 1 and wt == LEN:
            task = body[vs:e]
            _, payload = _spec_payloads(task)
            if payload is not None and _decode_spec(payload).name == model:
                out += _len_field(1, _rewrite_single(task, version))
                continue
        out += body[s:e]
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# REST paths

@dataclass(frozen=True, slots=True)
class RestTarget:
    model: str
    version: int | None
    label: str | None
    verb: str  # "status" | "metadata" | "predict" | "classify" | "regress"


# TF Serving matches its path regexes case-insensitively but then compares the verb and the
# "metadata" part case-sensitively: ":PREDICT" is a malformed request and ".../METADATA" is a
# status call. Hence the case-sensitive verb group and the exact comparison in parse_rest_path.
# A trailing slash matches nothing there (400 Malformed request), so it is not routed here either.
_GET = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?", re.IGNORECASE
)
_POST = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(?-i:(classify|regress|predict))",
    re.IGNORECASE,
)


@dataclass(slots=True)
class RestRequest:
    """What the REST forwarder needs besides the body: the routable target, if any, and the
    original request line parts for a call that is passed through unchanged. Read-only; not a
    frozen dataclass only because one is built per call and a frozen __init__ costs 3x."""

    http_method: str
    raw_path: str
    query: str
    target: RestTarget | None


def parse_rest_path(method: str, path: str) -> RestTarget | None:
    """Match a TF Serving REST path; None when it is not a routable model path.

    The model name and label are %-unescaped, as TF Serving does, so "half%5Fplus%5Ftwo" is
    the model half_plus_two. A name that does not unescape to UTF-8 is not routed (the request
    goes to a replica unchanged and gets its answer there).
    """
    if method == "GET":
        m = _GET.fullmatch(path)
        verb = "metadata" if m and m.group(4) == "metadata" else "status"
    elif method == "POST":
        m = _POST.fullmatch(path)
        verb = m.group(4) if m else ""
    else:
        return None
    if m is None:
        return None
    model, label = _unescape(m.group(1)), _unescape(m.group(3))
    if model is None or (label is None and m.group(3) is not None):
        return None
    return RestTarget(model, _int(m.group(2)), label, verb)


def _unescape(s: str | None) -> str | None:
    if s is None or "%" not in s:
        return s
    try:
        return unquote(s, errors="strict")
    except UnicodeDecodeError:
        return None


def _escape(s: str) -> str:
    """%-escape what could change the meaning of a path (a replica unescapes it again)."""
    return quote(s, safe="-._~!$&'()*+,;=@")


def _int(s: str | None) -> int | None:
    if s is None:
        return None
    try:
        return int(s)
    except ValueError as exc:
        raise BadRequest(f"Invalid version in request path: {s}") from exc


def rest_path_for(target: RestTarget, version: int | None) -> str:
    """The REST path forwarded to a replica: the resolved version replaces any label.

    A status call keeps the path it came with: TF Serving's status ignores a label and lists
    every version, so a label resolved to one version must not narrow the answer.
    """
    if target.verb == "status" and target.version is None:
        version = None
    base = f"/v1/models/{_escape(target.model)}"
    if version is not None:
        base += f"/versions/{version}"
    elif target.label is not None:
        base += f"/labels/{_escape(target.label)}"
    if target.verb == "status":
        return base
    if target.verb == "metadata":
        return base + "/metadata"
    return f"{base}:{target.verb}"


def upstream_path(req: RestRequest, version: int | None) -> str:
    """The path and query a REST call is forwarded with (the version resolved at the gateway
    replaces any label; a pass-through call keeps its request target as received)."""
    path = rest_path_for(req.target, version) if req.target is not None else req.raw_path
    return path + "?" + req.query if req.query else path
