"""REST JSON for classify and regress: tf.Examples in, results out (util/json_tensor.cc).

A request holds "examples" (a list of objects, one feature per key) and optionally a "context"
example shared by all; a JSON number with a fraction or exponent is a float feature, one without
is int64, a string or {"b64": ...} is bytes, and one feature may not mix kinds. Answers are
``{"results": ...}`` laid out by RapidJSON's PrettyWriter as TF Serving writes them.
"""

from __future__ import annotations

from typing import Any

from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from replica.errors import ServingError, invalid_argument
from replica.json_tensor import b64_decode, format_error, is_b64
from replica.rapidjson import PrettyWriter, json_type, write_decimal


def _feature_kind_error(name: str, feature: feature_pb2.Feature) -> ServingError:
    kind = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}.get(
        feature.WhichOneof("kind") or "", "UNKNOWN"
    )
    return invalid_argument(f"Unexpected element type in feature: {name} expecting type: {kind}")


def _add_feature_value(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    """AddValueToFeature: the JSON type picks the feature list; one list kind per feature."""
    kind = feature.WhichOneof("kind")

    def need(wanted: str) -> None:
        if kind not in (None, wanted):
            raise _feature_kind_error(name, feature)

    if value is None or isinstance(value, list) or (isinstance(value, dict) and not is_b64(value)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    if isinstance(value, bool):
        need("int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif isinstance(value, dict):
        need("bytes_list")
        feature.bytes_list.value.append(b64_decode(value))
    elif isinstance(value, str):
        need("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8", "surrogateescape"))
    elif isinstance(value, int) and -(2**63) <= value < 2**64:
        need("int64_list")
        if value >= 2**63:
            raise invalid_argument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.append(value)
    else:
        need("float_list")
        feature.float_list.value.append(float(value))


def _make_example(value: Any, example: example_pb2.Example) -> None:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {json_type(value)}")
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)
        example.features.feature[name].CopyFrom(feature)


def examples_input(doc: dict[str, Any]) -> input_pb2.Input:
    """FillClassifyRegressRequestFromJson after the signature: "context" and "examples"."""
    inp = input_pb2.Input()
    has_context = "context" in doc
    if has_context:
        _make_example(doc["context"], inp.example_list_with_context.context)
    if "examples" not in doc:
        raise format_error(doc, "When method is classify, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise format_error(doc, "'examples' value is an empty array")
    target = inp.example_list_with_context.examples if has_context else inp.example_list.examples
    for item in examples:
        _make_example(item, target.add())
    return inp


def classify_json(result: classification_pb2.ClassificationResult) -> str:
    if not result.classifications:
        raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
    writer = PrettyWriter()
    writer.start_object()
    writer.key("results")
    writer.start_array()
    for classifications in result.classifications:
        writer.single_line = True
        writer.start_array()
        for cls in classifications.classes:
            writer.start_array()
            writer.string(cls.label)
            writer.raw(write_decimal(cls.score, True))
            writer.end_array()
        writer.end_array()
        writer.single_line = False
    writer.end_array()
    writer.end_object()
    return writer.text()


def regress_json(result: regression_pb2.RegressionResult) -> str:
    if not result.regressions:
        raise invalid_argument("Cannot convert empty RegressionResults to JSON")
    writer = PrettyWriter()
    writer.start_object()
    writer.key("results")
    writer.single_line = True
    writer.start_array()
    for regression in result.regressions:
        writer.raw(write_decimal(regression.value, True))
    writer.end_array()
    writer.end_object()
    return writer.text()
