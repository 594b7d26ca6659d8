"""The cached answer (`Entry`) and its compact binary form for shared stores.

An `Entry` is what a hit replays: a status, the few headers worth replaying and the body bytes,
byte for byte as the replica sent them. `status` is the HTTP status for REST answers and the
gRPC status code for gRPC answers; the two ranges do not overlap (gRPC codes are 0..16, HTTP
statuses 100..599), so `is_success` can tell a success without knowing the protocol.

What must always hold:
- `decode_entry(encode_entry(e)) == e` for every entry;
- `decode_entry` never returns a half-read entry: anything short, long or unknown raises
  `MalformedEntry` (a `ValueError`), so a corrupt or foreign value in Redis is a miss, not an
  answer. The format is hand-rolled with `struct`: no pickle, nothing executable crosses the wire.

Wire format, version 1 (all integers big-endian):
    magic b"IGc" | version u8 | status u16 | header count u8 |
    per header: name length u16, name UTF-8, value length u16, value UTF-8 | body (the rest)
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

_MAGIC = b"IGc"
_VERSION = 1
_HEAD = struct.Struct(">3sBHB")
_LEN = struct.Struct(">H")
_MAX_HEADERS = 255
_MAX_FIELD = 0xFFFF

# Rough per-entry cost beyond the body in a Python process: the OrderedDict node, the key bytes
# object, the dataclass and its tuple. Used only for the memory budget, so an estimate is enough.
ENTRY_OVERHEAD_BYTES = 200

GRPC_OK = 0


class MalformedEntry(ValueError):
    """A stored value that is not a version-1 entry (truncated, foreign or from a newer gateway)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One cached answer. Treat as immutable: hits hand out the same object to every caller."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def make(cls, status: int, headers: Mapping[str, str], body: bytes) -> Entry:
        """Build from a header mapping (names kept as given, order kept)."""
        return cls(status=status, body=body, headers=tuple(headers.items()))

    @property
    def is_success(self) -> bool:
        """HTTP 2xx or gRPC OK: the only answers a cache may keep."""
        return self.status == GRPC_OK or 200 <= self.status < 300

    def header_dict(self) -> dict[str, str]:
        return dict(self.headers)

    def size_bytes(self) -> int:
        """Budget cost of this entry, without its key."""
        return (
            len(self.body)
            + sum(len(name) + len(value) for name, value in self.headers)
            + ENTRY_OVERHEAD_BYTES
        )


def encode_entry(entry: Entry) -> bytes:
    """Binary form of `entry`. Raises ValueError for what the format cannot carry."""
    if not 0 <= entry.status <= 0xFFFF:
        raise ValueError(f"status {entry.status} does not fit the cache format (0..65535)")
    if len(entry.headers) > _MAX_HEADERS:
        raise ValueError(f"{len(entry.headers)} headers; the cache format carries at most {_MAX_HEADERS}")
    parts = [_HEAD.pack(_MAGIC, _VERSION, entry.status, len(entry.headers))]
    for name, value in entry.headers:
        for text in (name, value):
            raw = text.encode("utf-8")
            if len(raw) > _MAX_FIELD:
                raise ValueError(
                    f"header field of {len(raw)} bytes; the cache format carries at most {_MAX_FIELD}"
                )
            parts.append(_LEN.pack(len(raw)))
            parts.append(raw)
    parts.append(entry.body)
    return b"".join(parts)


def decode_entry(data: bytes) -> Entry:
    """Inverse of `encode_entry`; raises `MalformedEntry` for anything else."""
    if len(data) < _HEAD.size:
        raise MalformedEntry(f"cache value of {len(data)} bytes is shorter than the header")
    magic, version, status, count = _HEAD.unpack_from(data, 0)
    if magic != _MAGIC:
        raise MalformedEntry("cache value does not start with the entry magic")
    if version != _VERSION:
        raise MalformedEntry(f"cache value has format version {version}, this gateway reads {_VERSION}")
    view = memoryview(data)
    pos = _HEAD.size
    headers: list[tuple[str, str]] = []
    for _ in range(count):
        fields: list[str] = []
        for _field in range(2):
            if pos + _LEN.size > len(data):
                raise MalformedEntry("cache value ends inside a header")
            (length,) = _LEN.unpack_from(data, pos)
            pos += _LEN.size
            if pos + length > len(data):
                raise MalformedEntry("cache value ends inside a header")
            try:
                fields.append(str(view[pos : pos + length], "utf-8"))
            except UnicodeDecodeError as exc:
                raise MalformedEntry("cache value has a header that is not UTF-8") from exc
            pos += length
        headers.append((fields[0], fields[1]))
    return Entry(status=status, body=bytes(view[pos:]), headers=tuple(headers))
