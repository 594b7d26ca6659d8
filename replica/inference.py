"""Predict, Classify, Regress and MultiInference on one Servable, with TF Serving's checks and texts.

These functions block (they run the TensorFlow session) and are called on inference threads. The
checks, their order and their messages follow tensorflow_serving/servables/tensorflow
(predict_util.cc, classifier.cc, regressor.cc, multi_inference.cc, util.cc) and TensorFlow's
saved_model/util.cc (GetInputValues); tests and gateway clients compare these texts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import text_format
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    regression_pb2,
)

from replica.errors import failed_precondition, invalid_argument, unimplemented
from replica.servable import Servable
from replica.tensors import dtype_enum, to_ndarray

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSIFY_INPUTS = "inputs"
CLASSIFY_OUTPUT_CLASSES = "classes"
CLASSIFY_OUTPUT_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"

SignatureDef = Any  # meta_graph_pb2.SignatureDef (TensorFlow ships no type stubs)


@dataclass(frozen=True)
class PreparedPredict:
    """Feeds and fetches for one Predict call, already checked against the signature."""

    signature_name: str
    feeds: list[tuple[str, np.ndarray]]
    fetches: list[str]
    aliases: list[str]


def make_model_spec(name: str, signature_name: str | None, version: int | None) -> model_pb2.ModelSpec:
    """util.cc MakeModelSpec: an empty signature name reads back as serving_default."""
    spec = model_pb2.ModelSpec(name=name)
    if signature_name is not None:
        spec.signature_name = signature_name or DEFAULT_SIGNATURE
    if version is not None:
        spec.version.value = version
    return spec


def _keys(keys: object) -> str:
    return ",".join(sorted(keys))  # type: ignore[call-overload]


def _debug_string(signature: SignatureDef) -> str:
    return str(text_format.MessageToString(signature))


def _dtype_name(array: np.ndarray) -> str:
    """DataType_Name(): "DT_FLOAT", "DT_STRING" ..."""
    return str(types_pb2.DataType.Name(dtype_enum(array)))


def _shape_string(array: np.ndarray) -> str:
    return "[" + ",".join(str(d) for d in array.shape) + "]"


# ---------------------------------------------------------------- Predict


def predict_signature(servable: Servable, signature_name: str) -> tuple[str, SignatureDef]:
    name = signature_name or DEFAULT_SIGNATURE
    if name not in servable.signatures:
        raise failed_precondition(f'Serving signature key "{name}" not found.')
    return name, servable.signatures[name]


def prepare_predict(
    servable: Servable,
    signature_name: str,
    inputs: Mapping[str, Any],
    output_filter: Sequence[str] = (),
    convert: Callable[[Any, str], np.ndarray] | None = None,
) -> PreparedPredict:
    """predict_util.cc PreProcessPrediction + saved_model GetInputValues.

    ``inputs`` holds arrays, or TensorProtos with ``convert`` turning one into an array (TF parses
    each tensor only after the signature checks, so a bad tensor is reported after them).
    """
    name, signature = predict_signature(servable, signature_name)
    sig_inputs = signature.inputs
    if len(inputs) > len(sig_inputs) or (len(inputs) < len(sig_inputs) and not signature.defaults):
        extra = set(inputs) - set(sig_inputs)
        missing = set(sig_inputs) - set(inputs)
        raise invalid_argument(
            f"input size does not match signature: {len(inputs)}!={len(sig_inputs)} "
            f"len({{{_keys(inputs)}}}) != len({{{_keys(sig_inputs)}}}). "
            f"Sent extra: {{{_keys(extra)}}}. Missing but required: {{{_keys(missing)}}}."
        )
    feeds: list[tuple[str, np.ndarray]] = []
    seen: set[str] = set()
    for alias in sorted(sig_inputs):
        feed_name = sig_inputs[alias].name
        if alias in inputs:
            value = convert(inputs[alias], alias) if convert is not None else inputs[alias]
            seen.add(alias)
        elif alias in signature.defaults:
            value = to_ndarray(signature.defaults[alias], alias)
        else:
            raise invalid_argument(
                f"Signature input alias: {alias}(feed name: {feed_name}) not found in request and no "
                f"default value provided. Inputs expected to be in the request {{{_keys(inputs)}}}, "
                f"or default input alias set: {_keys(signature.defaults)}"
            )
        feeds.append((feed_name, value))
    if inputs and len(seen) != len(inputs):
        raise invalid_argument(
            f"Inputs contains invalid name. Used request inputs: {_keys(seen)}, "
            f"request input: {_keys(inputs)}"
        )
    aliases: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the "
                f"set {{{_keys(signature.outputs)}}}."
            )
        if alias in aliases:
            raise invalid_argument(f"duplicate output tensor alias: {alias}")
        aliases.append(alias)
    if not aliases:
        aliases = sorted(signature.outputs)
    fetches = [signature.outputs[alias].name for alias in aliases]
    return PreparedPredict(name, feeds, fetches, aliases)


def run_predict(servable: Servable, prepared: PreparedPredict) -> tuple[dict[str, np.ndarray], int]:
    """Run a prepared Predict; returns outputs by alias and the runtime in microseconds."""
    start = time.perf_counter()
    outputs = servable.run(prepared.feeds, prepared.fetches)
    runtime_us = int((time.perf_counter() - start) * 1e6)
    return dict(zip(prepared.aliases, outputs, strict=True)), runtime_us


# ---------------------------------------------------------------- Classify / Regress


def _signature_for(servable: Servable, signature_name: str) -> SignatureDef:
    name = signature_name or DEFAULT_SIGNATURE
    if name not in servable.signatures:
        raise invalid_argument(f"No signature was found with the name: {name}")
    return servable.signatures[name]


def preprocess_classification(signature: SignatureDef) -> tuple[str, list[str]]:
    """classifier.cc PreProcessClassification: the input tensor and the output tensors to fetch."""
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if CLASSIFY_INPUTS not in signature.inputs:
        raise invalid_argument(f"No classification inputs found in SignatureDef: {_debug_string(signature)}")
    outputs = []
    if CLASSIFY_OUTPUT_CLASSES in signature.outputs:
        outputs.append(signature.outputs[CLASSIFY_OUTPUT_CLASSES].name)
    if CLASSIFY_OUTPUT_SCORES in signature.outputs:
        outputs.append(signature.outputs[CLASSIFY_OUTPUT_SCORES].name)
    if not outputs:
        raise invalid_argument(
            'Expected classification signature outputs to contain at least one of "classes" or '
            f'"scores". Signature was: {_debug_string(signature)}'
        )
    return signature.inputs[CLASSIFY_INPUTS].name, outputs


def preprocess_regression(signature: SignatureDef) -> tuple[str, list[str]]:
    """regressor.cc PreProcessRegression."""
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if REGRESS_INPUTS not in signature.inputs:
        raise invalid_argument(f"No regression inputs found in SignatureDef: {_debug_string(signature)}")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {_debug_string(signature)}")
    return signature.inputs[REGRESS_INPUTS].name, [signature.outputs[REGRESS_OUTPUTS].name]


def postprocess_classification(
    signature: SignatureDef, num_examples: int, outputs: Mapping[str, np.ndarray]
) -> classification_pb2.ClassificationResult:
    classes = scores = None
    if CLASSIFY_OUTPUT_CLASSES in signature.outputs:
        classes = outputs.get(signature.outputs[CLASSIFY_OUTPUT_CLASSES].name)
    if CLASSIFY_OUTPUT_SCORES in signature.outputs:
        scores = outputs.get(signature.outputs[CLASSIFY_OUTPUT_SCORES].name)
    for kind, tensor, want in (("classes", classes, "DT_STRING"), ("scores", scores, "DT_FLOAT")):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise invalid_argument(
                f"Expected Tensor shape: [batch_size num_classes] but got {_shape_string(tensor)}"
            )
        got = _dtype_name(tensor)
        if got != want:
            raise invalid_argument(f"Expected {kind} Tensor of {want}. Got: {got}")
        if tensor.shape[0] != num_examples:
            raise invalid_argument(
                f"Expected {kind} output batch size of {num_examples}. Got: {tensor.shape[0]}"
            )
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument(
            "Tensors class and score should match in dim_size(1). "
            f"Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    num_classes = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    result = classification_pb2.ClassificationResult()
    for i in range(num_examples):
        item = result.classifications.add()
        for c in range(num_classes):
            cl = item.classes.add()
            if classes is not None:
                label = classes[i, c]
                cl.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                cl.score = float(scores[i, c])
    return result


def postprocess_regression(
    signature: SignatureDef, num_examples: int, outputs: Mapping[str, np.ndarray]
) -> regression_pb2.RegressionResult:
    name = signature.outputs[REGRESS_OUTPUTS].name
    tensor = outputs.get(name)
    if tensor is None:
        raise invalid_argument(f"Could not find output tensor '{name}'")
    if not (tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[1] == 1)):
        raise invalid_argument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{_shape_string(tensor)}"
        )
    if tensor.shape[0] != num_examples:
        raise invalid_argument(
            f"Input batch size did not match output batch size: {num_examples} vs. {tensor.shape[0]}"
        )
    if tensor.dtype != np.float32:
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {_dtype_name(tensor)}")
    result = regression_pb2.RegressionResult()
    for value in tensor.reshape(-1).tolist():
        result.regressions.add(value=value)
    return result


def serialized_examples(inp: input_pb2.Input) -> np.ndarray:
    """util.cc InputToSerializedExampleTensor: context bytes are prepended to each example."""
    kind = inp.WhichOneof("kind")
    if kind == "example_list":
        items = [e.SerializeToString() for e in inp.example_list.examples]
    elif kind == "example_list_with_context":
        context = inp.example_list_with_context.context.SerializeToString()
        items = [context + e.SerializeToString() for e in inp.example_list_with_context.examples]
    else:
        items = []
    if not items:
        raise invalid_argument("Input is empty.")
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _run_examples(
    servable: Servable, input_names: Sequence[str], fetches: Sequence[str], inp: input_pb2.Input
) -> tuple[int, dict[str, np.ndarray], int]:
    examples = serialized_examples(inp)
    start = time.perf_counter()
    values = servable.run([(name, examples) for name in input_names], fetches)
    runtime_us = int((time.perf_counter() - start) * 1e6)
    return len(examples), dict(zip(fetches, values, strict=True)), runtime_us


def run_classify(
    servable: Servable, request: classification_pb2.ClassificationRequest
) -> tuple[classification_pb2.ClassificationResponse, int]:
    spec = request.model_spec
    signature = _signature_for(servable, spec.signature_name)
    input_name, fetches = preprocess_classification(signature)
    n, outputs, runtime_us = _run_examples(servable, [input_name], fetches, request.input)
    response = classification_pb2.ClassificationResponse(
        model_spec=make_model_spec(spec.name, spec.signature_name, servable.version),
        result=postprocess_classification(signature, n, outputs),
    )
    return response, runtime_us


def run_regress(
    servable: Servable, request: regression_pb2.RegressionRequest
) -> tuple[regression_pb2.RegressionResponse, int]:
    spec = request.model_spec
    signature = _signature_for(servable, spec.signature_name)
    input_name, fetches = preprocess_regression(signature)
    n, outputs, runtime_us = _run_examples(servable, [input_name], fetches, request.input)
    response = regression_pb2.RegressionResponse(
        model_spec=make_model_spec(spec.name, spec.signature_name, servable.version),
        result=postprocess_regression(signature, n, outputs),
    )
    return response, runtime_us


def run_multi_inference(
    servable: Servable, request: inference_pb2.MultiInferenceRequest
) -> tuple[inference_pb2.MultiInferenceResponse, int]:
    """multi_inference.cc: all tasks share one model and one batch of examples."""
    model_name = ""
    seen: set[str] = set()
    input_names: set[str] = set()
    fetch_names: set[str] = set()
    plans: list[tuple[inference_pb2.InferenceTask, SignatureDef]] = []
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid_argument("Found ModelSpec with an empty model name.")
        if not model_name:
            model_name = task.model_spec.name
        elif model_name != task.model_spec.name:
            raise invalid_argument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name."
            )
        signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature_name in seen:
            raise invalid_argument(f"Duplicate evaluation of signature: {signature_name}")
        seen.add(signature_name)
        if signature_name not in servable.signatures:
            raise invalid_argument(f"Requested signature not found in model graph: {signature_name}")
        signature = servable.signatures[signature_name]
        if task.method_name == CLASSIFY_METHOD:
            input_name, outputs = preprocess_classification(signature)
        elif task.method_name == REGRESS_METHOD:
            input_name, outputs = preprocess_regression(signature)
        else:
            raise unimplemented(f"Unsupported signature method_name: {task.method_name}")
        input_names.add(input_name)
        fetch_names.update(outputs)
        plans.append((task, signature))
    n, values, runtime_us = _run_examples(servable, sorted(input_names), sorted(fetch_names), request.input)
    response = inference_pb2.MultiInferenceResponse()
    for task, signature in plans:
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            result.classification_result.CopyFrom(postprocess_classification(signature, n, values))
        else:
            result.regression_result.CopyFrom(postprocess_regression(signature, n, values))
        result.model_spec.CopyFrom(
            make_model_spec(task.model_spec.name, task.model_spec.signature_name, servable.version)
        )
    return response, runtime_us
