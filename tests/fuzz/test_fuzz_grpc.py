"""gRPC fuzzing: raw request bytes to the TF Serving methods through the gateway's 8500 surface.

Bytes are sent with channel.unary_unary and no serializer, so nothing on the client side checks
them. They are built from protobuf fields by hand (ModelSpec: name = 1, version = 2 as an
Int64Value, signature_name = 3, version_label = 4; PredictRequest: model_spec = 1, inputs = 2)
with odd values (invalid UTF-8, negative and 10-byte varints, wrong wire types, lengths past the
end), then sometimes mutated (bytes flipped, cut, appended), or are plain random bytes.

Properties, for every call:
- an answer comes back (no hang) and a server-side code (INTERNAL, UNKNOWN, UNAVAILABLE,
  DATA_LOSS, DEADLINE_EXCEEDED) is only ever a replica's, relayed: its initial metadata names
  the replica;
- the gateway answers what the replica answers when asked directly (code, details, bytes);
- the gateway stays up and its resident memory stays flat over the run (after a warm-up).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.wire import encode_varint
from tests.fuzz.conftest import rss_kib
from tests.integration.gwproc import GatewayProc
from tests.support.procs import ReplicaProc

pytestmark = pytest.mark.integration

WARMUP = 200
CASES = 1000
DIFF_CASES = 300
RSS_SLACK_KIB = 30 * 1024
MAX_MESSAGE = 64 * 1024 * 1024
OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE),
           ("grpc.max_receive_message_length", MAX_MESSAGE)]

PREDICTION = "/tensorflow.serving.PredictionService/"
# HandleReloadConfigRequest is left out on purpose: random bytes may be a valid config that
# unloads every model of the shared replica.
METHODS = [PREDICTION + m for m in ("Predict", "Predict", "Predict", "Classify", "Regress",
                                    "MultiInference", "GetModelMetadata")]
METHODS += ["/tensorflow.serving.ModelService/GetModelStatus",
            PREDICTION + "Nope", "/tensorflow.serving.Nope/Predict", "/grpc.health.v1.Health/Check"]
SERVER_SIDE = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
               grpc.StatusCode.DATA_LOSS, grpc.StatusCode.DEADLINE_EXCEEDED}


# ---- protobuf by hand (varints from gateway.core.wire) --------------------------------------------

def field(number: int, wire: int, payload: bytes | int) -> bytes:
    tag = encode_varint(number << 3 | wire)
    if wire == 0:
        assert isinstance(payload, int)
        return tag + encode_varint(payload)
    assert isinstance(payload, bytes)
    if wire == 2:
        return tag + encode_varint(len(payload)) + payload
    return tag + payload  # fixed32 / fixed64: the caller gives the right width (or not)


names = st.one_of(st.sampled_from([b"half_plus_two", b"embed", b"nope", b"", b"HALF_PLUS_TWO"]),
                  st.binary(max_size=16), st.text(max_size=12).map(str.encode))
versions = st.one_of(st.sampled_from([1, 2, 9, 0, -1]), st.integers(-(2**63), 2**63 - 1))
labels = st.one_of(st.sampled_from([b"stable", b"canary", b"none", b""]), st.binary(max_size=8))


@st.composite
def model_specs(draw: st.DrawFn) -> bytes:
    parts = []
    if draw(st.booleans()):
        parts.append(field(1, 2, draw(names)))
    choice = draw(st.sampled_from(["none", "version", "label", "both", "raw_version"]))
    if choice in ("version", "both"):
        parts.append(field(2, 2, field(1, 0, draw(versions))))
    if choice in ("label", "both"):
        parts.append(field(4, 2, draw(labels)))
    if choice == "raw_version":
        parts.append(field(2, 0, draw(versions)))  # the wrong wire type for a message
    if draw(st.booleans()):
        parts.append(field(3, 2, draw(st.sampled_from(
            [b"serving_default", b"regress_x_to_y", b"classify_x_to_y", b"nope", b""]))))
    draw(st.randoms()).shuffle(parts)
    return b"".join(parts)


@st.composite
def tensors(draw: st.DrawFn) -> bytes:
    dtype = draw(st.sampled_from([1, 1, 1, 2, 3, 7, 9, 0, 99]))  # float, double, int32, string...
    values = draw(st.lists(st.floats(width=32, allow_nan=True), max_size=6))
    dims = draw(st.lists(st.integers(-2, 8), max_size=3))
    shape = b"".join(field(2, 2, field(1, 0, d)) for d in dims)
    packed = b"".join(struct.pack("<f", v) for v in values)
    return field(1, 0, dtype) + field(2, 2, shape) + field(5, 2, packed)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    parts = []
    if draw(st.integers(0, 9)):
        spec = draw(model_specs())
        parts.append(field(1, 2, spec))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from([b"x", b"y", b"inputs", b""]) | st.binary(max_size=6))
        parts.append(field(2, 2, field(1, 2, key) + field(2, 2, draw(tensors()))))
    if draw(st.booleans()):
        parts.append(field(3, 2, draw(st.sampled_from([b"y", b"nope"]))))
    if draw(st.integers(0, 4)) == 0:
        parts.append(draw(st.binary(min_size=1, max_size=8)))  # a stray tail
    return b"".join(parts)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(structured()))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "length"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == "cut" and data:
            data = data[:draw(st.integers(0, len(data) - 1))]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=6))
        elif op == "length":  # a length prefix far past the end of the message
            data[:0] = b"\x0a" + encode_varint(draw(st.integers(len(data) + 1, 2**31)))
    return bytes(data)


@st.composite
def valid_predicts(draw: st.DrawFn) -> bytes:
    """Predict calls the replica can answer (some by label or version), inputs of any length."""
    spec = field(1, 2, b"half_plus_two")
    pick = draw(st.sampled_from(["latest", "v1", "v2", "stable", "canary"]))
    if pick in ("v1", "v2"):
        spec += field(2, 2, field(1, 0, int(pick[1])))
    elif pick != "latest":
        spec += field(4, 2, pick.encode())
    values = draw(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=8))
    tensor = (field(1, 0, 1) + field(2, 2, field(2, 2, field(1, 0, len(values))))
              + field(5, 2, b"".join(struct.pack("<f", v) for v in values)))
    return field(1, 2, spec) + field(2, 2, field(1, 2, b"x") + field(2, 2, tensor))


request_bytes = st.one_of(structured(), structured(), mutated(), mutated(),
                          st.binary(max_size=64))
odd_calls = st.tuples(st.sampled_from(METHODS), request_bytes)
calls = st.one_of(odd_calls, odd_calls, odd_calls,
                  st.tuples(st.just(PREDICTION + "Predict"), valid_predicts()))


# ---- calls ------------------------------------------------------------------------------------

Outcome = tuple[grpc.StatusCode, str, bytes | None, dict[str, str]]


def invoke(channel: grpc.Channel, method: str, body: bytes) -> Outcome:
    mc = channel.unary_unary(method)
    try:
        reply, call = mc.with_call(body, timeout=15)
        md = {k: v for k, v in (call.initial_metadata() or ()) if isinstance(v, str)}
        return grpc.StatusCode.OK, "", reply, md
    except grpc.RpcError as err:
        md = {k: v for k, v in (err.initial_metadata() or ()) if isinstance(v, str)}  # type: ignore[attr-defined]
        return err.code(), err.details() or "", None, md  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def channels(gateway: GatewayProc, replica: ReplicaProc) -> Iterator[tuple[grpc.Channel, grpc.Channel]]:
    with grpc.insecure_channel(gateway.grpc_addr, options=OPTIONS) as via, \
            grpc.insecure_channel(replica.grpc_addr, options=OPTIONS) as direct:
        yield via, direct


def test_grpc_fuzz_no_gateway_errors_and_flat_memory(
        gateway: GatewayProc, channels: tuple[grpc.Channel, grpc.Channel]) -> None:
    via, _ = channels
    seen: dict[str, int] = {}

    def run(n: int) -> None:
        @settings(max_examples=n, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(calls)
        def case(c: tuple[str, bytes]) -> None:
            method, body = c
            code, details, _reply, md = invoke(via, method, body)
            seen[code.name] = seen.get(code.name, 0) + 1
            if code in SERVER_SIDE:
                assert md.get("x-infergate-replica"), \
                    f"the gateway's own {code.name} for {method}: {details[:300]}"

        case()

    run(WARMUP)
    before = rss_kib(gateway.pid)
    run(CASES)
    after = rss_kib(gateway.pid)
    print(f"\n[fuzz] gRPC: {WARMUP} warm-up + {CASES} cases, codes {dict(sorted(seen.items()))}, "
          f"gateway RSS {before // 1024} MiB -> {after // 1024} MiB "
          f"({(after - before) / 1024:+.1f} MiB)")
    assert gateway.proc.poll() is None, gateway.log()[-3000:]
    assert after - before < RSS_SLACK_KIB


def test_grpc_fuzz_same_answer_as_the_replica(
        channels: tuple[grpc.Channel, grpc.Channel]) -> None:
    via, direct = channels

    @settings(max_examples=DIFF_CASES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(calls)
    def case(c: tuple[str, bytes]) -> None:
        method, body = c
        g_code, g_details, g_reply, _ = invoke(via, method, body)
        r_code, r_details, r_reply, _ = invoke(direct, method, body)
        assert (g_code, g_details, g_reply) == (r_code, r_details, r_reply)

    case()
