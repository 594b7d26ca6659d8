"""The replica's REST surface against TF Serving's: answers byte for byte, errors, status, metadata.

A real replica process on free loopback ports serves real SavedModels (made once per session by
tests/support/models.py): half_plus_two v1 (0.5x+2) and v2 (0.5x+3), labelled stable=1 and
canary=2, and embed. Expected bodies are TF Serving's bytes where the layout matters.
"""

from __future__ import annotations

import gzip
import json
import pathlib
from collections.abc import Iterator

import pytest

from tests.support.models import write_model_config
from tests.support.procs import ReplicaProc, http_get, http_post, start_replica

pytestmark = pytest.mark.integration

V1_PREDICTIONS = b'{\n    "predictions": [2.5, 3.0, 4.5\n    ]\n}'
V2_PREDICTIONS = b'{\n    "predictions": [3.5, 4.0, 5.5\n    ]\n}'
INSTANCES = {"instances": [1.0, 2.0, 5.0]}


@pytest.fixture(scope="module")
def replica(models_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaProc]:
    config = write_model_config(tmp_path_factory.mktemp("replica") / "models.config", models_dir)
    proc = start_replica(config, extra_args=["--allow_version_labels_for_unavailable_models"])
    try:
        proc.wait_available("embed")
        yield proc
    finally:
        proc.stop()


def _error(body: bytes) -> str:
    return str(json.loads(body)["error"])


# ---------------------------------------------------------------- REST predict


def test_rest_predict_latest_version_answers_with_tf_serving_bytes(replica: ReplicaProc) -> None:
    status, body = http_post(f"{replica.rest_url}/v1/models/half_plus_two:predict", INSTANCES)
    assert (status, body) == (200, V2_PREDICTIONS)


def test_rest_predict_by_version_and_label(replica: ReplicaProc) -> None:
    base = f"{replica.rest_url}/v1/models/half_plus_two"
    assert http_post(f"{base}/versions/1:predict", INSTANCES) == (200, V1_PREDICTIONS)
    assert http_post(f"{base}/versions/2:predict", INSTANCES) == (200, V2_PREDICTIONS)
    assert http_post(f"{base}/labels/stable:predict", INSTANCES) == (200, V1_PREDICTIONS)
    assert http_post(f"{base}/labels/canary:predict", INSTANCES) == (200, V2_PREDICTIONS)


def test_rest_predict_columnar_rows_and_signature(replica: ReplicaProc) -> None:
    base = f"{replica.rest_url}/v1/models/half_plus_two/versions/1:predict"
    status, body = http_post(base, {"signature_name": "serving_default", "inputs": [1.0, 2.0]})
    assert (status, body) == (200, b'{\n    "outputs": [\n        2.5,\n        3.0\n    ]\n}')
    status, body = http_post(base, {"instances": [[1.0], [2.0]]})
    assert (status, body) == (200, b'{\n    "predictions": [[2.5], [3.0]\n    ]\n}')


def test_rest_predict_two_outputs_and_nan_tokens(replica: ReplicaProc) -> None:
    status, body = http_post(
        f"{replica.rest_url}/v1/models/embed:predict",
        {"signature_name": "with_norm", "instances": [[3.0, 4.0, 0.0, 0.0]]},
    )
    assert status == 200
    assert body == (
        b'{\n    "predictions": [\n        {\n            "embedding": [0.6, 0.8, 0.0, 0.0],'
        b'\n            "norm": 5.0\n        }\n    ]\n}'
    )
    status, body = http_post(
        f"{replica.rest_url}/v1/models/half_plus_two/versions/1:predict",
        '{"instances": [NaN, Infinity, -Infinity]}',
    )
    assert (status, body) == (200, b'{\n    "predictions": [NaN, Infinity, -Infinity\n    ]\n}')


def test_rest_gzip_body_and_case_insensitive_path(replica: ReplicaProc) -> None:
    url = f"{replica.rest_url}/V1/Models/half_plus_two/VERSIONS/1:predict"
    status, body = http_post(
        url, gzip.compress(json.dumps(INSTANCES).encode()), headers={"Content-Encoding": "gzip"}
    )
    assert (status, body) == (200, V1_PREDICTIONS)
    status, body = http_post(f"{replica.rest_url}/v1/models/half_plus_two:PREDICT", INSTANCES)
    assert status == 400
    assert _error(body) == "Malformed request: POST /v1/models/half_plus_two:PREDICT"


def test_rest_classify_and_regress(replica: ReplicaProc) -> None:
    base = f"{replica.rest_url}/v1/models/half_plus_two/versions/1"
    status, body = http_post(
        f"{base}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    )
    assert (status, body) == (200, b'{\n    "results": [[["", 3.0]]\n    ]\n}')
    status, body = http_post(
        f"{base}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
    )
    assert (status, body) == (200, b'{\n    "results": [42.0]\n}')
    status, body = http_post(
        f"{base}:regress",
        {"signature_name": "regress_x_to_y2", "context": {"x2": 1.0}, "examples": [{"x": 80.0}, {"x": 2.0}]},
    )
    assert (status, body) == (200, b'{\n    "results": [43.0, 4.0]\n}')
    status, body = http_post(f"{base}:classify", {"examples": [{"x": 2.0}]})
    assert status == 400
    assert _error(body).startswith("No classification inputs found in SignatureDef: ")


# ---------------------------------------------------------------- REST status, metadata, errors


def test_rest_status_lists_versions_newest_first(replica: ReplicaProc) -> None:
    status, body = http_get(f"{replica.rest_url}/v1/models/half_plus_two/versions/1")
    assert status == 200
    assert body == (
        b'{\n "model_version_status": [\n  {\n   "version": "1",\n   "state": "AVAILABLE",\n'
        b'   "status": {\n    "error_code": "OK",\n    "error_message": ""\n   }\n  }\n ]\n}\n'
    )
    states = replica.model_status("half_plus_two")
    assert [(s["version"], s["state"]) for s in states] == [("2", "AVAILABLE"), ("1", "AVAILABLE")]
    status, body = http_get(f"{replica.rest_url}/v1/models/half_plus_two/labels/stable")
    assert status == 200 and len(json.loads(body)["model_version_status"]) == 2  # labels are ignored


def test_rest_metadata(replica: ReplicaProc) -> None:
    status, body = http_get(f"{replica.rest_url}/v1/models/half_plus_two/labels/stable/metadata")
    assert status == 200
    assert body.startswith(b'{\n"model_spec":{\n "name": "half_plus_two",\n "version": "1",\n')
    doc = json.loads(body)
    signatures = doc["metadata"]["signature_def"]["signature_def"]
    assert set(signatures) == {
        "serving_default",
        "classify_x_to_y",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
    }
    assert signatures["serving_default"]["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert signatures["classify_x_to_y"]["method_name"] == "tensorflow/serving/classify"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v1/models/nope:predict", INSTANCES, 404, "Servable not found for request: Latest(nope)"),
        (
            "POST",
            "/v1/models/half_plus_two/versions/7:predict",
            INSTANCES,
            404,
            "Servable not found for request: Specific(half_plus_two, 7)",
        ),
        (
            "POST",
            "/v1/models/half_plus_two/labels/nope:predict",
            INSTANCES,
            400,
            "Unrecognized servable version label: nope",
        ),
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        (
            "GET",
            "/v1/models/half_plus_two/versions/9",
            None,
            404,
            "Could not find version 9 of model half_plus_two",
        ),
        ("GET", "/v1/models", None, 400, "Missing model name in request."),
        ("GET", "/v1/foo", None, 400, "Malformed request: GET /v1/foo"),
        (
            "GET",
            "/v1/models/half_plus_two:predict",
            None,
            400,
            "Malformed request: GET /v1/models/half_plus_two:predict",
        ),
        ("POST", "/v1/models/half_plus_two:predict", "", 400, "JSON Parse error: The document is empty"),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            "instances = [1, 2]",
            400,
            "JSON Parse error: Invalid value. at offset: 0",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            '{"instances": [1.0',
            400,
            "JSON Parse error: Missing a comma or ']' after an array element. at offset: 18",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"instances": ["x"]},
            400,
            "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
            'JSON Value: "x" Type: String is not of expected type: float',
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"instances": [[1.0], 2.0]},
            400,
            "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: "
            "Expecting shape [1] but got: []",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"instances": [1.0], "inputs": [1.0]},
            400,
            'JSON Value: {\n    "instances": [1.0],\n    "inputs": [1.0]\n} '
            "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"inputs": {"y": [1.0]}},
            400,
            "Missing named input: x in 'inputs' object.",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"signature_name": "nope", "instances": [1.0]},
            400,
            'Serving signature name: "nope" not found in signature def',
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"signature": 1},
            400,
            "Missing 'inputs' or 'instances' key",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:regress",
            {"signature_name": "regress_x_to_y"},
            400,
            'JSON Value: {\n    "signature_name": "regress_x_to_y"\n} When method is classify, key '
            "'examples' is expected and was not found",
        ),
    ],
)
def test_rest_errors(
    replica: ReplicaProc, method: str, path: str, body: object, status: int, message: str
) -> None:
    url = replica.rest_url + path
    got_status, got_body = http_post(url, body) if method == "POST" else http_get(url)  # type: ignore[arg-type]
    assert got_status == status
    assert _error(got_body) == message


def test_rest_outside_v1_is_plain_404(replica: ReplicaProc) -> None:
    assert http_get(f"{replica.rest_url}/foo") == (404, b"")
