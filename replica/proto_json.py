"""Protobuf messages as C++ ``MessageToJsonString`` prints them for TF Serving's REST answers.

TF Serving prints model status and metadata with add_whitespace and
always_print_fields_with_no_presence (metadata also with preserve_proto_field_names). Python's
json_format indents and orders differently, so the C++ layout is reproduced here
(protobuf src/google/protobuf/json/internal/unparser.cc and writer.h):
- one space of indent per level, ``"key": value``, a newline after the top-level object;
- fields in field-number order; fields without presence always printed (scalars with their
  default, repeated as ``[]``, maps as ``{}``), fields with presence (messages, oneof members)
  only when set;
- 64-bit integers quoted, enums by name, bytes as base64, wrapper types as their value.
Map keys are printed sorted so answers are deterministic (C++ leaves their order unspecified).
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
from google.protobuf import descriptor
from google.protobuf.message import Message

_FD: Any = descriptor.FieldDescriptor  # TensorFlow's protobuf ships no stubs; Any keeps mypy quiet
_QUOTED_INTS = {_FD.TYPE_INT64, _FD.TYPE_UINT64, _FD.TYPE_SINT64, _FD.TYPE_FIXED64, _FD.TYPE_SFIXED64}
_WRAPPERS = {
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}


def message_to_json(message: Message, *, preserve_proto_field_names: bool = False) -> str:
    out: list[str] = []
    _Writer(out, preserve_proto_field_names).message(message, 0)
    out.append("\n")
    return "".join(out)


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


class _Writer:
    def __init__(self, out: list[str], preserve_names: bool) -> None:
        self._out = out
        self._preserve = preserve_names

    def _newline(self, indent: int) -> None:
        self._out.append("\n" + " " * indent)

    def message(self, message: Message, indent: int) -> None:
        desc = message.DESCRIPTOR
        if desc.full_name in _WRAPPERS:
            self.scalar(desc.fields_by_name["value"], message.value)
            return
        fields = []
        for field in desc.fields:
            if field.is_repeated:
                fields.append(field)
            elif field.has_presence:
                if message.HasField(field.name):
                    fields.append(field)
            else:
                fields.append(field)
        fields.sort(key=lambda f: f.number)
        self._out.append("{")
        first = True
        for field in fields:
            if not first:
                self._out.append(",")
            first = False
            self._newline(indent + 1)
            name = field.name if self._preserve else field.json_name
            self._out.append(_quote(name) + ": ")
            self.field(message, field, indent + 1)
        if not first:
            self._newline(indent)
        self._out.append("}")

    def field(self, message: Message, field: _FD, indent: int) -> None:
        value = getattr(message, field.name)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            key_field = field.message_type.fields_by_name["key"]
            self._out.append("{")
            keys = sorted(value.keys())
            for i, key in enumerate(keys):
                if i:
                    self._out.append(",")
                self._newline(indent + 1)
                self._out.append(_quote(str(key).lower() if key_field.type == _FD.TYPE_BOOL else str(key)))
                self._out.append(": ")
                self.value(value_field, value[key], indent + 1)
            if keys:
                self._newline(indent)
            self._out.append("}")
        elif field.is_repeated:
            self._out.append("[")
            for i, item in enumerate(value):
                if i:
                    self._out.append(",")
                self._newline(indent + 1)
                self.value(field, item, indent + 1)
            if len(value):
                self._newline(indent)
            self._out.append("]")
        else:
            self.value(field, value, indent)

    def value(self, field: _FD, value: Any, indent: int) -> None:
        if field.type == _FD.TYPE_MESSAGE:
            self.message(value, indent)
        else:
            self.scalar(field, value)

    def scalar(self, field: _FD, value: Any) -> None:
        kind = field.type
        if kind == _FD.TYPE_BOOL:
            self._out.append("true" if value else "false")
        elif kind in _QUOTED_INTS:
            self._out.append(f'"{int(value)}"')
        elif kind == _FD.TYPE_ENUM:
            enum_value = field.enum_type.values_by_number.get(value)
            self._out.append(_quote(enum_value.name) if enum_value is not None else str(value))
        elif kind == _FD.TYPE_STRING:
            self._out.append(_quote(value))
        elif kind == _FD.TYPE_BYTES:
            self._out.append(_quote(base64.b64encode(value).decode("ascii")))
        elif kind in (_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE):
            self._out.append(_float(value, kind == _FD.TYPE_FLOAT))
        else:
            self._out.append(str(int(value)))


def _is_map(field: _FD) -> bool:
    return bool(
        field.is_repeated and field.type == _FD.TYPE_MESSAGE and field.message_type.GetOptions().map_entry
    )


def _float(value: float, single: bool) -> str:
    if math.isnan(value):
        return '"NaN"'
    if math.isinf(value):
        return '"Infinity"' if value > 0 else '"-Infinity"'
    if single:
        # Shortest text that reads back as the same float32.
        for digits in range(6, 9):
            candidate = f"{value:.{digits}g}"
            if float(np.float32(candidate)) == value:
                return candidate
        return f"{value:.9g}"
    return repr(float(value))
