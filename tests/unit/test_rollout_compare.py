"""compare_predictions: REST JSON with tolerance, and gRPC answers built with the real
TensorFlow Serving protos (the gateway reads them with its own wire reader)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from gateway.rollout.compare import compare_predictions


@pytest.mark.parametrize(("a", "b", "agree"), [
    (b'{"predictions": [2.5, 3.0]}', b'{"predictions": [2.5, 3.0]}', True),
    (b'{"predictions": [2.5, 3.0]}', b'{"predictions": [2.5004, 3.0]}', True),
    (b'{"predictions": [2.5, 3.0]}', b'{"predictions": [2.6, 3.0]}', False),
    (b'{"predictions": [0.0]}', b'{"predictions": [0.000001]}', True),  # atol near zero
    (b'{"predictions": [0.0]}', b'{"predictions": [0.001]}', False),
    (b'{"predictions": [[1, 2], [3, 4]]}', b'{"predictions": [[1, 2], [3]]}', False),
    (b'{"predictions": [{"a": 1.0, "b": "x"}]}', b'{"predictions": [{"a": 1.0, "b": "x"}]}', True),
    (b'{"predictions": [{"a": 1.0, "b": "x"}]}', b'{"predictions": [{"a": 1.0, "b": "y"}]}', False),
    (b'{"predictions": [{"a": 1.0}]}', b'{"predictions": [{"a": 1.0, "c": 2}]}', False),
    (b'{"outputs": {"y": [1.0]}}', b'{"outputs": {"y": [1.0]}}', True),
    (b'{"outputs": {"y": [1.0]}}', b'{"predictions": [1.0]}', False),
    (b'{"result": [[["a", 0.9], ["b", 0.1]]]}', b'{"result": [[["a", 0.90001], ["b", 0.1]]]}', True),
    (b'{"predictions": [true]}', b'{"predictions": [1]}', False),
    (b'{"predictions": [1]}', b'{"predictions": [1.0]}', True),
    (b'{"predictions": [2.5]}', b"not json", False),
    (b'{"error": "x"}', b'{"predictions": [1]}', False),
])
def test_rest(a: bytes, b: bytes, agree: bool) -> None:
    assert compare_predictions(a, b, "rest") is agree
    assert compare_predictions(b, a, "rest") is agree


def predict(version: int, outputs: dict[str, tf.Tensor | np.ndarray], content: bool = True) -> bytes:
    r = predict_pb2.PredictResponse()
    r.model_spec.name = "m"
    r.model_spec.version.value = version
    r.model_spec.signature_name = "serving_default"
    for k, v in outputs.items():
        t = tf.make_tensor_proto(v)
        if not content and t.dtype == tf.float32.as_datatype_enum:
            vals = np.asarray(v, np.float32).ravel().tolist()
            t.ClearField("tensor_content")
            t.float_val.extend(vals)
        r.outputs[k].CopyFrom(t)
    return bytes(r.SerializeToString())


X = np.array([[2.5, 3.0, 4.5]], np.float32)


def test_grpc_predict_ignores_the_version_and_the_encoding() -> None:
    a = predict(1, {"y": X})
    assert compare_predictions(a, predict(2, {"y": X}), "grpc")
    assert compare_predictions(a, predict(2, {"y": X}, content=False), "grpc")
    assert compare_predictions(a, predict(2, {"y": X + 1e-4}), "grpc")


@pytest.mark.parametrize("other", [
    {"y": X + 0.1},
    {"y": X.reshape(3, 1)},
    {"y": X.astype(np.float64)},
    {"y": X, "z": X},
    {"z": X},
    {"y": X[:, :2]},
])
def test_grpc_predict_disagreements(other: dict[str, np.ndarray]) -> None:
    a = predict(1, {"y": X})
    assert not compare_predictions(a, predict(2, other), "grpc")
    assert not compare_predictions(predict(2, other), a, "grpc")


def test_grpc_predict_other_dtypes() -> None:
    ints = np.array([1, -2, 3], np.int64)
    assert compare_predictions(predict(1, {"i": ints}), predict(2, {"i": ints}), "grpc")
    assert not compare_predictions(predict(1, {"i": ints}), predict(2, {"i": ints * 2}), "grpc")
    s = np.array([b"cat", b"dog"])
    assert compare_predictions(predict(1, {"s": s}), predict(2, {"s": s}), "grpc")
    assert not compare_predictions(predict(1, {"s": s}), predict(2, {"s": s[::-1]}), "grpc")
    h = np.array([0.5, 1.5], np.float16)
    assert compare_predictions(predict(1, {"h": h}), predict(2, {"h": h}), "grpc")
    assert not compare_predictions(predict(1, {"h": h}), predict(2, {"h": h * 2}), "grpc")
    d = np.array([0.25, -1e300], np.float64)
    t = tf.make_tensor_proto(d)
    t.ClearField("tensor_content")
    t.double_val.extend(d.tolist())
    r = predict_pb2.PredictResponse()
    r.outputs["d"].CopyFrom(t)
    assert compare_predictions(predict(1, {"d": d}), r.SerializeToString(), "grpc")


def test_grpc_a_single_value_stands_for_the_whole_tensor() -> None:
    filled = np.full((2, 3), 7.0, np.float32)
    r = predict_pb2.PredictResponse()
    r.outputs["y"].CopyFrom(tf.make_tensor_proto(7.0, dtype=tf.float32, shape=[2, 3]))
    assert len(r.outputs["y"].float_val) == 1
    assert compare_predictions(predict(1, {"y": filled}), r.SerializeToString(), "grpc")


def classify(version: int, scores: list[float], labels: tuple[str, ...] = ("a", "b")) -> bytes:
    r = classification_pb2.ClassificationResponse()
    r.model_spec.name = "m"
    r.model_spec.version.value = version
    c = r.result.classifications.add()
    for label, score in zip(labels, scores, strict=True):
        c.classes.add(label=label, score=score)
    return bytes(r.SerializeToString())


def test_grpc_classify_and_regress() -> None:
    assert compare_predictions(classify(1, [0.9, 0.1]), classify(2, [0.90001, 0.1]), "grpc",
                               method="classify")
    assert not compare_predictions(classify(1, [0.9, 0.1]), classify(2, [0.6, 0.4]), "grpc",
                                   method="classify")
    assert not compare_predictions(classify(1, [0.9, 0.1]), classify(2, [0.9, 0.1], ("a", "c")),
                                   "grpc", method="classify")
    r1, r2 = regression_pb2.RegressionResponse(), regression_pb2.RegressionResponse()
    r1.model_spec.version.value, r2.model_spec.version.value = 1, 2
    r1.result.regressions.add(value=1.5)
    r2.result.regressions.add(value=1.5)
    assert compare_predictions(r1.SerializeToString(), r2.SerializeToString(), "grpc", method="regress")
    r2.result.regressions[0].value = 2.5
    assert not compare_predictions(r1.SerializeToString(), r2.SerializeToString(), "grpc",
                                   method="regress")


def test_grpc_multi_inference_drops_each_results_model_spec() -> None:
    def multi(version: int, value: float) -> bytes:
        r = inference_pb2.MultiInferenceResponse()
        res = r.results.add()
        res.model_spec.name = "m"
        res.model_spec.version.value = version
        res.regression_result.regressions.add(value=value)
        return bytes(r.SerializeToString())

    assert compare_predictions(multi(1, 3.0), multi(2, 3.0), "grpc", method="multi_inference")
    assert not compare_predictions(multi(1, 3.0), multi(2, 4.0), "grpc", method="multi_inference")


def test_grpc_garbage_is_a_disagreement_not_an_error() -> None:
    a = predict(1, {"y": X})
    assert not compare_predictions(a, b"\xff\xff\xff", "grpc")
    assert not compare_predictions(a, a[:-3], "grpc")
    truncated = b"\x0a\x05abc"  # a 5-byte field holding 3 bytes
    assert not compare_predictions(truncated, truncated, "grpc", method="classify")
