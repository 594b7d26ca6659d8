"""The replica's TF-Serving-compatible formats and rules that need no process or TensorFlow:
RapidJSON number and layout rules, parse errors, the Prometheus page, knobs, version policies."""

from __future__ import annotations

import math
import pathlib

import pytest
from tensorflow_serving.config import model_server_config_pb2

from replica.errors import ServingError
from replica.knobs import Knobs
from replica.metrics import ReplicaMetrics
from replica.models import aspired_versions, list_versions
from replica.rapidjson import PrettyWriter, debug_string, format_double, parse_json, write_decimal


@pytest.mark.parametrize(
    ("value", "single", "text"),
    [
        (2.5, True, "2.5"),
        (3.0, True, "3.0"),
        (0.10000000149011612, True, "0.1"),  # float32(0.1)
        (123456792.0, True, "123456792.0"),  # six digits do not read back: %.9g
        (1e-05, False, "1e-05"),
        (9000000.0, False, "9e+06"),
        (1 / 3, False, "0.33333333333333331"),
        (-0.0, True, "-0.0"),
        (math.nan, True, "NaN"),
        (-math.inf, True, "-Infinity"),
    ],
)
def test_write_decimal_matches_json_tensor_cc(value: float, single: bool, text: str) -> None:
    assert write_decimal(value, single) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1.0"),
        (100.0, "100.0"),
        (0.5, "0.5"),
        (-2.5, "-2.5"),
        (123.456, "123.456"),
        (1e21, "1e21"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (0.0, "0.0"),
    ],
)
def test_format_double_matches_rapidjson_prettify(value: float, text: str) -> None:
    assert format_double(value) == text


def test_pretty_writer_lays_out_rows_as_tf_serving() -> None:
    writer = PrettyWriter()
    writer.start_object()
    writer.key("predictions")
    writer.start_array()
    for row in (["2.5"], ["3.0"]):
        writer.single_line = True
        writer.start_array()
        for token in row:
            writer.raw(token)
        writer.end_array()
        writer.single_line = False
    writer.end_array()
    writer.end_object()
    assert writer.text() == '{\n    "predictions": [[2.5], [3.0]\n    ]\n}'


def test_debug_string_is_single_line_arrays_and_cut_at_256_bytes() -> None:
    assert debug_string({"a": [1, 2.0, "x\n"]}) == '{\n    "a": [1, 2.0, "x\\n"]\n}'
    long = debug_string(list(range(1000)))
    assert 256 <= len(long) < 270 and not long.endswith("]")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "JSON Parse error: The document is empty"),
        (b"  ", "JSON Parse error: The document is empty. at offset: 2"),
        (b'{"a": 1,}', "JSON Parse error: Missing a name for object member. at offset: 8"),
        (b"[1 2]", "JSON Parse error: Missing a comma or ']' after an array element. at offset: 3"),
        (b'{"a": 1 "b": 2}', "JSON Parse error: Missing a comma or '}' after an object member. at offset: 8"),
        (b'{"a" 1}', "JSON Parse error: Missing a colon after a name of object member. at offset: 5"),
        (b"[1]", "JSON Value: [1] Is not object"),
    ],
)
def test_parse_errors_use_rapidjson_messages(body: bytes, message: str) -> None:
    with pytest.raises(ServingError) as info:
        parse_json(body)
    assert info.value.message == message


def test_parse_accepts_nan_tokens_and_ignores_trailing_bytes() -> None:
    doc = parse_json(b'{"instances": [NaN, -Infinity]} trailing')
    assert math.isnan(doc["instances"][0]) and doc["instances"][1] == -math.inf


def test_prometheus_page_uses_tf_serving_names_buckets_and_numbers() -> None:
    metrics = ReplicaMetrics()
    metrics.record_request("m", "OK")
    metrics.record_request("m", "OK")
    metrics.record_request_latency("m", "predict", "REST", 10)  # exactly a limit: counted above it
    metrics.record_request_latency("m", "predict", "REST", 1234567)
    page = metrics.render(Knobs())
    assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 2\n' in page
    prefix = ':tensorflow:serving:request_latency_bucket{model_name="m",API="predict",entrypoint="REST"'
    assert f'{prefix},le="-1.79769e+308"}} 0\n' in page
    assert f'{prefix},le="10"}} 0\n' in page
    assert f'{prefix},le="18"}} 1\n' in page
    assert f'{prefix},le="+Inf"}} 2\n' in page
    labels = '{model_name="m",API="predict",entrypoint="REST"}'
    assert f":tensorflow:serving:request_latency_sum{labels} 1.23458e+06\n" in page
    assert "DCGM_FI_DEV_GPU_UTIL" not in page
    assert 'DCGM_FI_DEV_GPU_UTIL{gpu="0"' in metrics.render(Knobs(gpu_util=0.5))


def test_knobs_validate_every_change() -> None:
    knobs = Knobs().updated({"latency_ms": 50, "error_rate": 0.25, "gpu_util": 0.9})
    assert knobs.as_dict() == {
        "latency_ms": 50.0,
        "latency_jitter_ms": 0.0,
        "error_rate": 0.25,
        "gpu_util": 0.9,
    }
    for bad in ({"error_rate": 2}, {"latency_ms": -1}, {"nope": 1}, {"gpu_util": "high"}):
        with pytest.raises(ValueError):
            knobs.updated(bad)
    assert knobs.updated({"gpu_util": None}).gpu_util is None


def test_version_policies_and_version_folders(tmp_path: pathlib.Path) -> None:
    for name in ("1", "2", "0010", "draft", "3"):
        (tmp_path / name).mkdir()
        if name != "3":  # version 3 is still being written: no saved_model.pb yet
            (tmp_path / name / "saved_model.pb").write_bytes(b"")
    on_disk = list_versions(str(tmp_path))
    assert sorted(on_disk) == [1, 2, 10]
    config = model_server_config_pb2.ModelConfig(name="m", base_path=str(tmp_path))
    assert sorted(aspired_versions(config, on_disk)) == [10]
    config.model_version_policy.latest.num_versions = 2
    assert sorted(aspired_versions(config, on_disk)) == [2, 10]
    config.model_version_policy.all.SetInParent()
    assert sorted(aspired_versions(config, on_disk)) == [1, 2, 10]
    config.model_version_policy.specific.versions.extend([1, 7])
    assert sorted(aspired_versions(config, on_disk)) == [1]
