"""REST JSON <-> tensors for Predict, following tensorflow_serving/util/json_tensor.cc.

Requests: ``instances`` (row form: one entry per batch item, all of one shape) or ``inputs``
(columnar form), ``{"b64": ...}`` for binary strings. Answers: ``predictions`` (row) or
``outputs`` (columnar), written with RapidJSON's PrettyWriter exactly as TF Serving lays them out.
Every check and message mirrors json_tensor.cc, including the order in which they are made.
Classify and regress bodies (tf.Examples) are in replica.json_examples.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from replica.errors import ServingError, invalid_argument, unimplemented
from replica.rapidjson import PrettyWriter, debug_string, json_type, quote, write_decimal
from replica.tensors import dtype_enum, dtype_name

_INT32 = (types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8)
_NUMPY: dict[int, Any] = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_BOOL: np.bool_,
    types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64,
    types_pb2.DT_STRING: object,
}


def format_error(value: Any, *parts: str) -> ServingError:
    return invalid_argument(f"JSON Value: {debug_string(value)} " + "".join(parts))


def signature_name(doc: dict[str, Any]) -> str:
    """FillSignature: the optional "signature_name", which must be a string."""
    if "signature_name" not in doc:
        return ""
    value = doc["signature_name"]
    if not isinstance(value, str):
        raise invalid_argument(
            f"JSON Value: {debug_string(doc)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return value


# ---------------------------------------------------------------- values


def is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def b64_decode(value: Any) -> bytes:
    if not is_b64(value):
        raise invalid_argument(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    text = value["b64"]
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid_argument("Unable to base64 decode") from exc


def _type_error(value: Any, dtype: int) -> ServingError:
    return invalid_argument(
        f"JSON Value: {debug_string(value)} Type: {json_type(value)} "
        f"is not of expected type: {dtype_name(dtype)}"
    )


def _is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _scalar(value: Any, dtype: int) -> Any:
    """AddValueToTensor for one JSON scalar."""
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        ok = type(value) is float or type(value) is int
    elif dtype in _INT32:
        ok = _is_int(value, -(2**31), 2**31 - 1)
    elif dtype == types_pb2.DT_INT64:
        ok = _is_int(value, -(2**63), 2**63 - 1)
    elif dtype == types_pb2.DT_UINT32:
        ok = _is_int(value, 0, 2**32 - 1)
    elif dtype == types_pb2.DT_UINT64:
        ok = _is_int(value, 0, 2**64 - 1)
    elif dtype == types_pb2.DT_BOOL:
        ok = type(value) is bool
    elif dtype == types_pb2.DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return value.encode("utf-8", "surrogateescape")
    else:
        raise unimplemented(f"Conversion of JSON Value: {debug_string(value)} to type: {dtype_name(dtype)}")
    if not ok:
        raise _type_error(value, dtype)
    return value


def _dense_shape(value: Any) -> list[int]:
    """GetDenseTensorShape: follow the first element of each nested list."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value: Any, level: int, dtype: int, shape: list[int], out: list[Any]) -> None:
    """FillTensorProto: every leaf at depth rank, every list the size the shape says."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise invalid_argument(
                f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} in the "
                f"JSON DOM. Expected at level: {rank}"
            )
        if isinstance(value, dict):
            if dtype != types_pb2.DT_STRING:
                raise _type_error(value, dtype)
            out.append(b64_decode(value))
        else:
            out.append(_scalar(value, dtype))
        return
    if level >= rank:
        raise invalid_argument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise invalid_argument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    if level == rank - 1 and dtype == types_pb2.DT_FLOAT and all(type(v) is float for v in value):
        out.extend(value)  # the common case, without a call per element
        return
    for item in value:
        _fill(item, level + 1, dtype, shape, out)


def _array(values: list[Any], dtype: int, shape: list[int]) -> np.ndarray:
    if dtype == types_pb2.DT_STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    if dtype in _INT32:
        return np.array(values, dtype=np.int64).astype(_NUMPY[dtype]).reshape(shape)
    return np.array(values, dtype=_NUMPY[dtype]).reshape(shape)


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# ---------------------------------------------------------------- predict requests


def predict_inputs(
    doc: dict[str, Any], signature: meta_graph_pb2.SignatureDef, signame: str
) -> tuple[dict[str, np.ndarray], bool]:
    """FillPredictRequestFromJson after the signature lookup: (arrays by alias, row format?)."""
    infos = {name: signature.inputs[name].dtype for name in sorted(signature.inputs)}
    if not infos:
        raise invalid_argument(f"Failed to get input map for signature: {signame or 'DEFAULT'}")
    if "instances" in doc:
        if "inputs" in doc:
            raise format_error(
                doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
            )
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise format_error(doc, "Expecting 'instances' to be an list/array")
        if not instances:
            raise format_error(doc, "No values in 'instances' array")
        return _from_instances(instances, infos), True
    if "inputs" in doc:
        return _from_inputs(doc["inputs"], infos), False
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _from_instances(instances: list[Any], infos: dict[str, int]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInstancesList: batch the instances along a new first dimension."""
    if not isinstance(instances[0], dict) and len(infos) > 1:
        raise invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )

    def is_object(value: Any) -> bool:
        return isinstance(value, dict) and not is_b64(value)

    objects = is_object(instances[0])
    first_name = next(iter(infos))
    sizes: dict[str, int] = {}
    shapes: dict[str, list[int]] = {}
    values: dict[str, list[Any]] = {}

    def add(item: Any, name: str) -> None:
        if name not in infos:
            raise invalid_argument(f"JSON object: does not have named input: {name}")
        shape = _dense_shape(item)
        out: list[Any] = []
        _fill(item, 0, infos[name], shape, out)
        if name not in sizes:
            sizes[name], shapes[name] = len(out), shape
        elif sizes[name] != len(out):
            raise invalid_argument(f"Expecting tensor size: {sizes[name]} but got: {len(out)}")
        elif shapes[name] != shape:
            raise invalid_argument(
                f"Expecting shape {_shape_text(shapes[name])} but got: {_shape_text(shape)}"
            )
        values.setdefault(name, []).extend(out)

    for count, element in enumerate(instances):
        if objects:
            if not is_object(element):
                raise invalid_argument(f"Expecting object but got list at item {count} of input list")
            for name, item in element.items():
                try:
                    add(item, name)
                except ServingError as exc:
                    raise invalid_argument(
                        f"Failed to process element: {count} key: {name} of 'instances' list. "
                        f"Error: {exc.status_string()}"
                    ) from exc
            if set(element) != set(infos):
                raise invalid_argument(
                    f"Failed to process element: {count} of 'instances' list. JSON object: "
                    f"{debug_string(element)} keys must be equal to: {','.join(infos)}"
                )
        else:
            if is_object(element):
                raise invalid_argument(f"Expecting value/list but got object at item {count} of input list")
            try:
                add(element, first_name)
            except ServingError as exc:
                raise invalid_argument(
                    f"Failed to process element: {count} of 'instances' list. Error: {exc.status_string()}"
                ) from exc
    batch = len(instances)
    return {name: _array(vals, infos[name], [batch, *shapes[name]]) for name, vals in values.items()}


def _from_inputs(value: Any, infos: dict[str, int]) -> dict[str, np.ndarray]:
    """FillTensorMapFromInputsMap: one tensor, or an object of named tensors."""
    if not isinstance(value, dict) or is_b64(value):
        if len(infos) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        named = {next(iter(infos)): value}
    else:
        named = {}
        for name in infos:
            if name not in value:
                raise invalid_argument(f"Missing named input: {name} in 'inputs' object.")
            named[name] = value[name]
    arrays = {}
    for name, item in named.items():
        shape = _dense_shape(item)
        out: list[Any] = []
        _fill(item, 0, infos[name], shape, out)
        arrays[name] = _array(out, infos[name], shape)
    return arrays


# ---------------------------------------------------------------- predict answers


def _tokens(name: str, array: np.ndarray) -> list[str]:
    """AddSingleValueAndAdvance for every value of a tensor, flattened."""
    dtype = dtype_enum(array)
    flat = array.reshape(-1).tolist()
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        single = dtype == types_pb2.DT_FLOAT
        return [write_decimal(v, single) for v in flat]
    if dtype in (*_INT32, types_pb2.DT_INT64, types_pb2.DT_UINT32, types_pb2.DT_UINT64):
        return [str(int(v)) for v in flat]
    if dtype == types_pb2.DT_BOOL:
        return ["true" if v else "false" for v in flat]
    if dtype == types_pb2.DT_STRING:
        if name.endswith("_bytes"):
            return [_B64_MARK + base64.b64encode(_bytes(v)).decode("ascii") for v in flat]
        return [quote(_bytes(v).decode("utf-8", "surrogateescape")) for v in flat]
    raise invalid_argument(f"Failed to write JSON value for tensor type: {dtype_name(dtype)}")


_B64_MARK = "\x00b64:"  # internal marker: write this token as a {"b64": ...} object


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _write_token(writer: PrettyWriter, token: str) -> None:
    if token.startswith(_B64_MARK):
        writer.start_object()
        writer.key("b64")
        writer.raw(quote(token[len(_B64_MARK) :]))
        writer.end_object()
    else:
        writer.raw(token)


def _write_values(
    writer: PrettyWriter, tokens: list[str], shape: tuple[int, ...], dim: int, pos: list[int]
) -> None:
    """AddTensorValues: nested arrays from dimension ``dim`` on; scalars written bare."""
    if dim > len(shape) - 1:
        _write_token(writer, tokens[pos[0]])
        pos[0] += 1
        return
    writer.start_array()
    for _ in range(shape[dim]):
        if dim == len(shape) - 1:
            _write_token(writer, tokens[pos[0]])
            pos[0] += 1
        else:
            _write_values(writer, tokens, shape, dim + 1, pos)
    writer.end_array()


def predict_json(outputs: Mapping[str, np.ndarray], row_format: bool) -> str:
    """MakeJsonFromTensors: {"predictions": ...} for row requests, {"outputs": ...} for columnar."""
    if not outputs:
        raise invalid_argument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    writer = PrettyWriter()
    if row_format:
        batch = -1
        for name in names:
            array = outputs[name]
            if array.ndim == 0:
                raise invalid_argument(f"Tensor name: {name} has no shape information ")
            if batch >= 0 and batch != array.shape[0]:
                raise invalid_argument(
                    f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}"
                )
            batch = array.shape[0]
        tokens = {name: _tokens(name, outputs[name]) for name in names}
        objects = len(names) > 1
        positions = {name: [0] for name in names}
        writer.start_object()
        writer.key("predictions")
        writer.start_array()
        for _ in range(batch):
            if objects:
                writer.start_object()
            writer.single_line = True
            for name in names:
                if objects:
                    writer.key(name)
                _write_values(writer, tokens[name], outputs[name].shape, 1, positions[name])
            writer.single_line = False
            if objects:
                writer.end_object()
        writer.end_array()
        writer.end_object()
        return writer.text()
    objects = len(names) > 1
    writer.start_object()
    writer.key("outputs")
    if objects:
        writer.start_object()
    for name in names:
        if objects:
            writer.key(name)
        _write_values(writer, _tokens(name, outputs[name]), outputs[name].shape, 0, [0])
    if objects:
        writer.end_object()
    writer.end_object()
    return writer.text()


def error_json(message: str) -> str:
    """MakeJsonFromStatus: {"error": "<message>"}."""
    writer = PrettyWriter()
    writer.start_object()
    writer.key("error")
    writer.string(message)
    writer.end_object()
    return writer.text()
