"""The fixed request and answer bytes the benchmark sends and the fixed backend returns.

Hand-encoded protobuf (field numbers from tensorflow_serving/apis/predict.proto and
tensorflow/core/framework/tensor.proto), so the harness needs no TensorFlow.
PredictRequest: model_spec = 1, inputs = 2 (map<string, TensorProto>).
PredictResponse: outputs = 1 (map<string, TensorProto>), model_spec = 2.
TensorProto: dtype = 1 (DT_FLOAT = 1), tensor_shape = 2 {dim = 2 {size = 1}}, float_val = 5.
"""

from __future__ import annotations

import struct

from gateway.core.wire import encode_varint

MODEL = "half_plus_two"
REST_PREDICT_BODY = b'{"instances": [1.0, 2.0, 5.0]}'
REST_PREDICT_ANSWER = b'{"predictions": [2.5, 3.0, 4.5]}'
REST_STATUS_ANSWER = (b'{"model_version_status": [{"version": "1", "state": "AVAILABLE", '
                      b'"status": {"error_code": "OK", "error_message": ""}}]}')
PREDICT_PATH = "/tensorflow.serving.PredictionService/Predict"


def _len(field: int, payload: bytes) -> bytes:
    return encode_varint(field << 3 | 2) + encode_varint(len(payload)) + payload


def _float_tensor(values: list[float]) -> bytes:
    shape = _len(2, _len(2, b"\x08" + encode_varint(len(values))))
    floats = _len(5, struct.pack(f"<{len(values)}f", *values))
    return b"\x08\x01" + shape + floats


def model_spec(name: str = MODEL, version: int | None = None) -> bytes:
    spec = _len(1, name.encode())
    if version is not None:
        spec += _len(2, b"\x08" + encode_varint(version))
    return spec


def predict_request(values: list[float] | None = None) -> bytes:
    x = _float_tensor(values or [1.0, 2.0, 5.0])
    return _len(1, model_spec()) + _len(2, _len(1, b"x") + _len(2, x))


def predict_response(version: int = 1) -> bytes:
    y = _float_tensor([2.5, 3.0, 4.5])
    return _len(1, _len(1, b"y") + _len(2, y)) + _len(2, model_spec(version=version)
                                                      + _len(3, b"serving_default"))


def grpc_frame(message: bytes) -> bytes:
    """The gRPC length-prefixed message: flag byte 0 (not compressed), 4-byte big-endian length."""
    return b"\x00" + struct.pack(">I", len(message)) + message
