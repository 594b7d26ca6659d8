"""Do two answers of the same call agree? The prediction-agreement check of a canary rollout.

A mirrored sample of calls is answered by both the stable and the canary version; the rollout
controller counts how often the two answers agree. Two versions of one model never answer
byte for byte alike (the gRPC answer names the version that served it, floats drift in the last
bits), so agreement is numeric: numbers agree when |a - b| <= atol + rtol * |b| (the rule of
numpy.isclose), everything else must be equal.

REST answers are JSON documents compared as a whole (predict's "predictions"/"outputs",
classify's and regress's "result"). gRPC answers are protobuf bytes, read with the wire reader of
`gateway.core.wire`: the ModelSpec (field 2 of Predict/Classification/RegressionResponse, field 1 of
each MultiInference result) is dropped, tensors are decoded by hand (TensorProto field numbers
as TensorFlow's tensor.proto defines them) and compared by dtype, shape and values.

What must always hold: anything unparseable, or parseable only on one side, is a disagreement,
never an exception; this module never imports TensorFlow.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson

from gateway.core.wire import I32, I64, LEN, VARINT, WireError, iter_fields, read_varint

Value = float | int | bytes


def compare_predictions(a: bytes, b: bytes, protocol: str, rtol: float = 1e-3, atol: float = 1e-5,
                        method: str = "predict") -> bool:
    """True when answers `a` and `b` agree within tolerance.

    `protocol` is "rest" (JSON bodies) or "grpc" (serialized response messages); `method`
    ("predict", "classify", "regress", "multi_inference") selects the gRPC message type.
    """
    try:
        if protocol == "rest":
            return _json_close(orjson.loads(a), orjson.loads(b), rtol, atol)
        if method == "predict":
            return _predict_close(a, b, rtol, atol)
        if method == "multi_inference":
            return _multi_close(a, b, rtol, atol)
        return _generic_close(_drop(a, 2), _drop(b, 2), rtol, atol)
    except (orjson.JSONDecodeError, WireError, struct.error, UnicodeDecodeError, ValueError):
        return False


def _close(x: float, y: float, rtol: float, atol: float) -> bool:
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)  # both failed the same way: they agree
    if math.isinf(x) or math.isinf(y):
        return x == y
    return abs(x - y) <= atol + rtol * abs(y)


def _json_close(x: Any, y: Any, rtol: float, atol: float) -> bool:
    if isinstance(x, bool) or isinstance(y, bool):
        return x is y
    if isinstance(x, int | float) and isinstance(y, int | float):
        return _close(float(x), float(y), rtol, atol)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_json_close(p, q, rtol, atol) for p, q in zip(x, y, strict=True))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_json_close(x[k], y[k], rtol, atol) for k in x)
    return type(x) is type(y) and bool(x == y)


# ---------------------------------------------------------------------------------------------
# gRPC answers

def _drop(msg: bytes, field: int) -> bytes:
    return b"".join(msg[s:e] for f, _wt, s, _vs, e in iter_fields(msg) if f != field)


def _outputs(msg: bytes) -> dict[str, bytes]:
    """PredictResponse.outputs (field 1, map<string, TensorProto>) by output name."""
    out: dict[str, bytes] = {}
    for f, wt, _s, vs, e in iter_fields(msg):
        if f == 1 and wt == LEN:
            entry = msg[vs:e]
            key, value = "", b""
            for f2, wt2, _s2, vs2, e2 in iter_fields(entry):
                if f2 == 1 and wt2 == LEN:
                    key = entry[vs2:e2].decode("utf-8")
                elif f2 == 2 and wt2 == LEN:
                    value = entry[vs2:e2]
            out[key] = value  # a repeated map key: the last one wins, as in protobuf
    return out


def _predict_close(a: bytes, b: bytes, rtol: float, atol: float) -> bool:
    oa, ob = _outputs(a), _outputs(b)
    if oa.keys() != ob.keys():
        return False
    return all(_tensor_close(oa[k], ob[k], rtol, atol) for k in oa)


def _multi_close(a: bytes, b: bytes, rtol: float, atol: float) -> bool:
    ra = [a[vs:e] for f, wt, _s, vs, e in iter_fields(a) if f == 1 and wt == LEN]
    rb = [b[vs:e] for f, wt, _s, vs, e in iter_fields(b) if f == 1 and wt == LEN]
    return len(ra) == len(rb) and all(
        _generic_close(_drop(x, 1), _drop(y, 1), rtol, atol) for x, y in zip(ra, rb, strict=True))


def _generic_close(a: bytes, b: bytes, rtol: float, atol: float, depth: int = 0) -> bool:
    """Classification/Regression results: nested messages whose only floats are fixed32
    scores/values. Fixed32 fields compare as float32 with tolerance, nested messages recurse,
    everything else must be byte-equal."""
    if a == b:
        return True
    if depth > 8:
        return False
    fa, fb = iter_fields(a), iter_fields(b)
    if len(fa) != len(fb):
        return False
    for (f1, w1, _s1, v1, e1), (f2, w2, _s2, v2, e2) in zip(fa, fb, strict=True):
        if f1 != f2 or w1 != w2:
            return False
        x, y = a[v1:e1], b[v2:e2]
        if w1 == I32:
            if not _close(struct.unpack("<f", x)[0], struct.unpack("<f", y)[0], rtol, atol):
                return False
        elif w1 == I64:
            if not _close(struct.unpack("<d", x)[0], struct.unpack("<d", y)[0], rtol, atol):
                return False
        elif x != y:
            if w1 != LEN:
                return False
            try:
                if not _generic_close(x, y, rtol, atol, depth + 1):
                    return False
            except WireError:
                return False  # differing bytes that are not a message (labels, strings)
    return True


# TensorProto dtype -> struct format of one element in tensor_content (little-endian).
_CONTENT_FMT = {1: "f", 2: "d", 3: "i", 4: "B", 5: "h", 6: "b", 8: "f", 9: "q", 10: "?", 17: "H",
                18: "d", 19: "e", 22: "I", 23: "Q"}
_HALF, _BFLOAT16, _STRING = 19, 14, 7
_FLOAT_FIELDS = {5: "f", 9: "f", 6: "d", 12: "d"}  # float_val, scomplex_val, double_val, dcomplex_val
_INT_FIELDS = {7: 32, 10: 64, 11: 0, 13: 0, 16: 0, 17: 0}  # signed width, 0 = unsigned


def _signed(v: int, bits: int) -> int:
    # int32 and int64 negatives are both sign-extended ten-byte varints on the wire.
    return v - (1 << 64) if bits and v >= 1 << 63 else v


def _half_bits(bits: int, dtype: int) -> float:
    if dtype == _BFLOAT16:
        f: float = struct.unpack("<f", struct.pack("<I", (bits & 0xFFFF) << 16))[0]
        return f
    h: float = struct.unpack("<e", struct.pack("<H", bits & 0xFFFF))[0]
    return h


def _decode_tensor(t: bytes) -> tuple[int, list[int], list[Value]]:
    """(dtype, shape, flat values) of a serialized TensorProto."""
    dtype, shape, content = 0, [], b""
    values: list[Value] = []
    for f, wt, _s, vs, e in iter_fields(t):
        raw = t[vs:e]
        if f == 1 and wt == VARINT:
            dtype = read_varint(t, vs)[0]
        elif f == 2 and wt == LEN:
            for f2, wt2, _s2, vs2, e2 in iter_fields(raw):
                if f2 == 2 and wt2 == LEN:
                    dim = raw[vs2:e2]
                    size = 0
                    for f3, wt3, _s3, vs3, _e3 in iter_fields(dim):
                        if f3 == 1 and wt3 == VARINT:
                            size = _signed(read_varint(dim, vs3)[0], 64)
                    shape.append(size)
        elif f == 4 and wt == LEN:
            content = raw
        elif f == 8 and wt == LEN:
            values.append(raw)
        elif f in _FLOAT_FIELDS:
            fmt = _FLOAT_FIELDS[f]
            width = struct.calcsize(fmt)
            if wt == LEN:  # packed
                values.extend(struct.unpack(f"<{len(raw) // width}{fmt}", raw[: len(raw) // width * width]))
            else:
                values.append(struct.unpack(f"<{fmt}", raw)[0])
        elif f in _INT_FIELDS:
            ints: list[int] = []
            if wt == LEN:
                pos = 0
                while pos < len(raw):
                    v, pos = read_varint(raw, pos)
                    ints.append(v)
            elif wt == VARINT:
                ints.append(read_varint(t, vs)[0])
            if f == 13:
                values.extend(_half_bits(v, dtype) for v in ints)
            else:
                values.extend(_signed(v, _INT_FIELDS[f]) for v in ints)
    if content:
        if dtype == _BFLOAT16:
            values = [_half_bits(v, dtype) for v in struct.unpack(f"<{len(content) // 2}H", content)]
        elif dtype in _CONTENT_FMT:
            fmt = _CONTENT_FMT[dtype]
            values = list(struct.unpack(f"<{len(content) // struct.calcsize(fmt)}{fmt}", content))
        else:
            values = [content]  # an element type we do not decode: compare its bytes
    n = math.prod(shape) if shape else 1
    if 0 < len(values) < n and not (content and dtype not in _CONTENT_FMT and dtype != _BFLOAT16):
        values += [values[-1]] * (n - len(values))  # TensorProto repeats the last value
    return dtype, shape, values


def _tensor_close(a: bytes, b: bytes, rtol: float, atol: float) -> bool:
    da, sa, va = _decode_tensor(a)
    db, sb, vb = _decode_tensor(b)
    if da != db or sa != sb or len(va) != len(vb):
        return False
    for x, y in zip(va, vb, strict=True):
        if isinstance(x, float) or isinstance(y, float):
            if isinstance(x, bytes) or isinstance(y, bytes):
                return False
            if not _close(float(x), float(y), rtol, atol):
                return False
        elif x != y:
            return False
    return True
