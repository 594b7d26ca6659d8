"""Exact-match cache keys: one 16-byte BLAKE2b digest per (call, canonical body).

The key covers protocol, method, model, the RESOLVED version, the signature name and the body, so a
new version never serves an answer computed by an old one, and a REST call never answers a gRPC
one (their bodies and answers differ in kind).

Canonical body:
- REST: the JSON body is parsed and re-serialised with sorted keys and no whitespace, so
  `{"a": 1, "b": 2}` and `{"b":2,"a":1}` share a key. orjson does this fast but rejects some JSON
  that TF Serving accepts (NaN / Infinity / -Infinity tokens, lone surrogate escapes); for those
  the stdlib `json` module parses and re-serialises instead (it reads and writes those tokens).
  A body neither can parse, larger than `canonical_limit` (1 MiB), or needing the slower stdlib
  path and larger than `STDLIB_CANONICAL_LIMIT` (64 KiB) is hashed as raw bytes, which is still
  correct, only blind to formatting. Which of the three paths was used is part of the hash.
  Numbers are compared by value as parsed: `1.0` and `1.00` are the same float, `1` and `1.0`
  are not (int vs float), which may cost a hit but never gives a wrong one. orjson reads integers
  beyond 64 bits as doubles; TF Serving's parser does the same (and refuses them for integer
  tensors), so bodies that differ only past double precision get the same answer and may share a
  key. Callers pass the body after any Content-Encoding (gzip) has been removed.
- gRPC: the raw request bytes. The gateway may have rewritten ModelSpec (field 1: a label turned
  into a version); callers pass the bytes AFTER that resolution, so equal calls give equal bytes.
  Protobuf serialisation is not canonical across client libraries (field order, packed vs
  unpacked), so two clients may miss each other's entries; that costs hits, never correctness.

What must always hold: distinct field values give distinct hash inputs (every field is
length-prefixed), and `KEY_SCHEMA` changes whenever the hash input changes, so gateways of
different releases sharing a Redis never read each other's entries.
"""

from __future__ import annotations

import hashlib
import json
import struct

import orjson

KEY_SCHEMA = 1
KEY_BYTES = 16
PROTOCOLS = frozenset({"rest", "grpc"})
# Canonicalising costs about 4 us per KiB with orjson and ten times that with the stdlib parser
# (measured on the 2-core build machine, float-heavy predict bodies), all of it on the event loop.
# Past these sizes the body is hashed raw (BLAKE2b: about 1 us per KiB): still exact, only blind
# to formatting.
DEFAULT_CANONICAL_LIMIT = 1 << 20
STDLIB_CANONICAL_LIMIT = 64 << 10

_PERSON = b"infergate-key"
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")

_TAG_ORJSON = b"J"
_TAG_STDLIB = b"S"
_TAG_RAW = b"R"


def canonical_rest_body(body: bytes, canonical_limit: int = DEFAULT_CANONICAL_LIMIT) -> tuple[bytes, bytes]:
    """(path tag, canonical bytes) for a REST JSON body; see the module docstring for the paths."""
    if not body or len(body) > canonical_limit:
        return _TAG_RAW, body
    strict = _orjson_canonical(body)
    if strict is not None:
        return _TAG_ORJSON, strict
    if len(body) > STDLIB_CANONICAL_LIMIT:
        return _TAG_RAW, body
    try:
        value = json.loads(body)
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    except (ValueError, RecursionError):
        return _TAG_RAW, body  # not JSON at all: exact bytes are still a correct key
    return _TAG_STDLIB, text.encode("ascii")


def _orjson_canonical(body: bytes) -> bytes | None:
    """Sorted, compact JSON via orjson; None when orjson refuses the document.

    orjson refuses NaN / Infinity tokens, lone surrogates, and nesting deeper than its limits
    (1024 to read, 254 to write); the stdlib path handles the first two.
    """
    try:
        return orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return None


def cache_key(
    model: str,
    version: int,
    signature: str,
    method: str,
    protocol: str,
    body: bytes,
    *,
    canonical_limit: int = DEFAULT_CANONICAL_LIMIT,
) -> bytes:
    """16-byte key for an exact-match lookup. `version` is the resolved numeric version.

    Raises ValueError for a protocol other than "rest" or "grpc" (the body rule depends on it).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"cache_key: protocol must be 'rest' or 'grpc', got {protocol!r}")
    if protocol == "rest":
        tag, canonical = canonical_rest_body(body, canonical_limit)
    else:
        tag, canonical = _TAG_RAW, body
    h = hashlib.blake2b(digest_size=KEY_BYTES, person=_PERSON)
    h.update(bytes((KEY_SCHEMA,)))
    for text in (protocol, method, model, signature):
        raw = text.encode("utf-8")
        h.update(_U32.pack(len(raw)))
        h.update(raw)
    h.update(_I64.pack(version))
    h.update(tag)
    h.update(_U32.pack(len(canonical)))
    h.update(canonical)
    return h.digest()
