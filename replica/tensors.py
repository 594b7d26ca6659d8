"""TensorProto <-> numpy conversions with TensorFlow's semantics.

Responses are written as TF Serving writes them by default: typed value fields (float_val, int_val,
...) as Tensor::AsProtoField does; ``--enable_serialization_as_tensor_content`` switches to packed
tensor_content as Tensor::AsProtoTensorContent does. Requests accept both forms (tf.make_ndarray).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from replica.errors import invalid_argument

# dtype enum -> (TensorProto field, numpy dtype the values are written from)
_VALUE_FIELDS: dict[int, str] = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def dtype_enum(array: np.ndarray) -> int:
    """The DataType enum of a session output."""
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        return int(types_pb2.DT_STRING)
    return int(tf.dtypes.as_dtype(array.dtype).as_datatype_enum)


def dtype_name(dtype: int) -> str:
    """DataTypeString(): "float", "double", "int32", "string", "half" ..."""
    try:
        return str(types_pb2.DataType.Name(dtype))[3:].lower()
    except ValueError:
        return f"unknown dtype enum ({dtype})"


def shape_proto(shape: tuple[int, ...]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in shape]
    )


def to_ndarray(proto: tensor_pb2.TensorProto, alias: str) -> np.ndarray:
    """Tensor::FromProto; a malformed proto is "tensor parsing error: <alias>"."""
    try:
        return np.asarray(tf.make_ndarray(proto))
    except (TypeError, ValueError) as exc:
        raise invalid_argument(f"tensor parsing error: {alias}") from exc


def as_proto_field(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Tensor::AsProtoField: dtype, shape and the typed repeated value field."""
    dtype = dtype_enum(array)
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape_proto(array.shape))
    field = _VALUE_FIELDS.get(dtype)
    flat = array.reshape(-1)
    if field == "string_val":
        proto.string_val.extend(_as_bytes(v) for v in flat.tolist())
    elif field is not None:
        getattr(proto, field).extend(flat.tolist())
    elif dtype in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        proto.half_val.extend(flat.view(np.uint16).astype(np.int32).tolist())
    elif dtype == types_pb2.DT_COMPLEX64:
        proto.scomplex_val.extend(flat.view(np.float32).tolist())
    elif dtype == types_pb2.DT_COMPLEX128:
        proto.dcomplex_val.extend(flat.view(np.float64).tolist())
    else:
        return tf.make_tensor_proto(array)
    return proto


def as_proto_content(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Tensor::AsProtoTensorContent: packed bytes for numeric types, string_val for strings."""
    if dtype_enum(array) == types_pb2.DT_STRING:
        return as_proto_field(array)
    return tf.make_tensor_proto(array)


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()
