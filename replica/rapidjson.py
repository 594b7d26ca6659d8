"""JSON reading and writing with the behaviour of RapidJSON as TF Serving configures it.

TF Serving parses REST bodies with RapidJSON (NaN/Infinity accepted, parsing stops after the first
complete value) and writes answers with RapidJSON's PrettyWriter (4-space indent, arrays on one
line where TF Serving asks for kFormatSingleLineArray, floats as util/json_tensor.cc WriteDecimal
prints them). ``PrettyWriter`` reproduces that writer's state machine token for token, so answers
match TF Serving's bytes; ``debug_string`` is JsonValueToDebugString (used inside error texts).

Parse errors carry RapidJSON's English messages (rapidjson/error/en.h); Python's json module finds
the same errors, so its messages are mapped onto RapidJSON's.
"""

from __future__ import annotations

import json
import math
import re
import struct
from decimal import Decimal
from typing import Any

from replica.errors import invalid_argument

_INDENT = "    "
_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}
_NEEDS_ESCAPE = re.compile(r'[\x00-\x1f"\\]')
_DEBUG_LIMIT = 256


def quote(text: str) -> str:
    """RapidJSON Writer::WriteString: escape quote, backslash and control characters only."""
    return '"' + _NEEDS_ESCAPE.sub(_escape_char, text) + '"'


def _escape_char(match: re.Match[str]) -> str:
    char = match.group(0)
    return _ESCAPES.get(char) or f"\\u{ord(char):04X}"


class _Stop(Exception):
    """Raised to stop writing once a length-limited writer is full."""


class PrettyWriter:
    """rapidjson::PrettyWriter with 4-space indent; ``single_line`` is kFormatSingleLineArray."""

    def __init__(self, limit: int | None = None) -> None:
        self._parts: list[str] = []
        self._size = 0
        self._stack: list[list[Any]] = []  # [in_array, value_count]
        self._limit = limit
        self.single_line = False

    def text(self) -> str:
        return "".join(self._parts)

    def _put(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)

    def _event(self) -> None:
        if self._limit is not None and self._size >= self._limit:
            raise _Stop

    def _prefix(self) -> None:
        if not self._stack:
            return
        level = self._stack[-1]
        if level[0]:
            if level[1] > 0:
                self._put(", " if self.single_line else ",")
            if not self.single_line:
                self._put("\n" + _INDENT * len(self._stack))
        else:
            if level[1] > 0:
                self._put(",\n" if level[1] % 2 == 0 else ": ")
            else:
                self._put("\n")
            if level[1] % 2 == 0:
                self._put(_INDENT * len(self._stack))
        level[1] += 1

    def raw(self, token: str) -> None:
        """A scalar token already in JSON form (number, true/false/null, quoted string)."""
        self._event()
        self._prefix()
        self._put(token)

    def string(self, text: str) -> None:
        self.raw(quote(text))

    key = string

    def start_object(self) -> None:
        self._event()
        self._prefix()
        self._stack.append([False, 0])
        self._put("{")

    def end_object(self) -> None:
        self._event()
        level = self._stack.pop()
        if level[1]:
            self._put("\n" + _INDENT * len(self._stack))
        self._put("}")

    def start_array(self) -> None:
        self._event()
        self._prefix()
        self._stack.append([True, 0])
        self._put("[")

    def end_array(self) -> None:
        self._event()
        level = self._stack.pop()
        if level[1] and not self.single_line:
            self._put("\n" + _INDENT * len(self._stack))
        self._put("]")


# ---------------------------------------------------------------- numbers


def _six_digit_decimal(value: float, single: bool) -> str:
    text = f"{value:.6g}"
    back = float(text)
    if single:
        back = struct.unpack("f", struct.pack("f", back))[0]
    if back != value:
        text = f"{value:.9g}" if single else f"{value:.17g}"
    return text


def write_decimal(value: float, single: bool) -> str:
    """json_tensor.cc WriteDecimal: %g with six digits unless that does not read back exactly."""
    if math.isfinite(value):
        text = _six_digit_decimal(value, single)
        if "." not in text and "e" not in text:
            text += ".0"
        return text
    if math.isnan(value):
        return "NaN"
    return "-Infinity" if value < 0 else "Infinity"


def format_double(value: float) -> str:
    """RapidJSON Writer::Double: shortest digits, laid out by rapidjson's Prettify()."""
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign, digits_tuple, exponent = Decimal(repr(value)).as_tuple()
    digits = "".join(str(d) for d in digits_tuple).rstrip("0") or "0"
    k = int(exponent) + (len(digits_tuple) - len(digits))
    length = len(digits)
    kk = length + k
    prefix = "-" if sign else ""
    if 0 <= k and kk <= 21:
        body = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        body = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        body = "0." + "0" * (-kk) + digits
    elif length == 1:
        body = f"{digits}e{kk - 1}"
    else:
        body = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return prefix + body


# ---------------------------------------------------------------- DOM values


def json_type(value: Any) -> str:
    """JsonTypeString() for a parsed value."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def write_value(writer: PrettyWriter, value: Any) -> None:
    if isinstance(value, dict):
        writer.start_object()
        for key, item in value.items():
            writer.key(key)
            write_value(writer, item)
        writer.end_object()
    elif isinstance(value, list):
        writer.start_array()
        for item in value:
            write_value(writer, item)
        writer.end_array()
    elif value is None:
        writer.raw("null")
    elif value is True or value is False:
        writer.raw("true" if value else "false")
    elif isinstance(value, str):
        writer.string(value)
    elif isinstance(value, int):
        writer.raw(str(value))
    elif math.isfinite(value):
        writer.raw(format_double(value))
    else:
        raise _Stop  # RapidJSON's Writer refuses NaN/Infinity and stops there.


def debug_string(value: Any) -> str:
    """JsonValueToDebugString: pretty, single-line arrays, cut after 256 bytes."""
    writer = PrettyWriter(limit=_DEBUG_LIMIT)
    writer.single_line = True
    try:
        write_value(writer, value)
    except _Stop:
        pass  # truncation is the documented behaviour of the debug string
    return writer.text()


# ---------------------------------------------------------------- parsing

_PY_TO_RAPIDJSON = (
    ("Expecting value", "Invalid value."),
    ("Expecting property name enclosed in double quotes", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid \\uXXXX escape", "Incorrect hex digit after \\u escape in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
    ("Invalid control character", "Invalid encoding in string."),
)


def _container_at(text: str, pos: int) -> str:
    """'{' or '[': the innermost container open at ``pos`` (to name a missing-comma error)."""
    stack: list[str] = []
    in_string = escaped = False
    for char in text[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else "["


def parse_json(body: bytes) -> Any:
    """json_tensor.cc ParseJson: one JSON value (trailing bytes ignored) that must be an object."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    text = body.decode("utf-8", "surrogateescape")
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if start == len(text):
        raise invalid_argument(f"JSON Parse error: The document is empty. at offset: {start}")
    try:
        doc, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as exc:
        message = "Unspecific syntax error."
        for prefix, rapid in _PY_TO_RAPIDJSON:
            if exc.msg.startswith(prefix):
                message = rapid
                break
        else:
            if exc.msg.startswith("Expecting ',' delimiter"):
                message = (
                    "Missing a comma or '}' after an object member."
                    if _container_at(text, exc.pos) == "{"
                    else "Missing a comma or ']' after an array element."
                )
        raise invalid_argument(f"JSON Parse error: {message} at offset: {exc.pos}") from exc
    except RecursionError as exc:
        raise invalid_argument("JSON Parse error: Unspecific syntax error. at offset: 0") from exc
    except ValueError as exc:  # an integer literal longer than Python converts
        raise invalid_argument(
            "JSON Parse error: Number too big to be stored in double. at offset: 0"
        ) from exc
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {debug_string(doc)} Is not object")
    return doc
