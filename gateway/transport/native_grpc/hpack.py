"""HPACK (RFC 7541) for the gateway's HTTP/2 connections, over the hpack package's tables.

Decoding uses the hpack package's static table (hpack.table.HeaderTable.STATIC_TABLE) and its
Huffman decoder (hpack.huffman_table.decode_huffman); the walk over representations and the
dynamic table (RFC 7541 section 4) are ours so that:
- repeated header blocks are decoded once and replayed (see HpackDecoder);
- the decoded size is checked while decoding (the "HPACK bomb": a few bytes naming a large
  table entry many times), against SETTINGS_MAX_HEADER_LIST_SIZE.
Encoding never uses the dynamic table (literal without indexing, static-table names), so the
peer's table needs no bookkeeping and the encoding of a (name, value) pair is cacheable.

What must always hold: the dynamic table never exceeds the size we advertised; an invalid
block (bad index, truncated string, invalid Huffman code, size update after a field, table
update above the limit) raises HpackError and the connection ends with COMPRESSION_ERROR.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

Header = tuple[str, str]
Headers = tuple[Header, ...]

_STATIC = HeaderTable.STATIC_TABLE
_STATIC_LEN = len(_STATIC)
_STATIC_STR: tuple[Header, ...] = tuple((n.decode("latin-1"), v.decode("latin-1"))
                                        for n, v in _STATIC)
_MAX_INT = 2**32
_CACHE_MAX = 512


class HpackError(Exception):
    """The header block cannot be decoded; the connection's compression state is lost."""


class HeaderListTooLarge(HpackError):
    """The decoded header list exceeds the advertised SETTINGS_MAX_HEADER_LIST_SIZE."""


def _int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """Decode an HPACK integer with a `prefix`-bit prefix starting at data[pos]."""
    mask = (1 << prefix) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    n = len(data)
    while True:
        if pos >= n:
            raise HpackError("truncated integer")
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        if value > _MAX_INT:
            raise HpackError("integer too large")
        if not b & 0x80:
            return value, pos
        shift += 7


def _str(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(data):
        raise HpackError("truncated string")
    huffman = data[pos] & 0x80
    length, pos = _int(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HpackError("truncated string")
    raw = data[pos:end]
    if huffman:
        try:
            raw = decode_huffman(raw)
        except HPACKDecodingError as exc:
            raise HpackError(str(exc)) from None
    return raw, end


class HpackDecoder:
    """One connection's decoding context.

    Two memos make repeated blocks cheap. A block that refers to no dynamic-table entry decodes
    to the same list whatever the table holds, and changes the table the same way each time:
    it is remembered with the entries it adds and replayed (servers like nginx resend the same
    literal-with-indexing block for every answer). A block that does refer to dynamic entries
    but changes nothing is remembered until the table next changes (clients repeat the same
    indexed block for every call).
    """

    __slots__ = ("_dyn", "_size", "_max_size", "max_table_size", "max_list_size", "_pure",
                 "_bound", "_last_pure", "_steady")

    def __init__(self, max_table_size: int = 4096, max_list_size: int = 65536) -> None:
        self._dyn: deque[Header] = deque()
        self._size = 0
        self._max_size = max_table_size  # current size limit, as set by the encoder
        self.max_table_size = max_table_size  # what we advertised in SETTINGS_HEADER_TABLE_SIZE
        self.max_list_size = max_list_size
        self._pure: dict[bytes, tuple[Headers, tuple[Header, ...], int]] = {}
        self._bound: dict[bytes, Headers] = {}
        self._last_pure: bytes | None = None  # the last remembered block replayed
        self._steady: bytes | None = None  # a block whose replay is known to change nothing

    def _entry(self, index: int) -> Header:
        if 0 < index <= _STATIC_LEN:
            return _STATIC_STR[index - 1]
        i = index - _STATIC_LEN - 1
        if index <= 0 or i >= len(self._dyn):
            raise HpackError(f"invalid table index {index}")
        return self._dyn[i]

    def _add(self, header: Header) -> None:
        size = len(header[0]) + len(header[1]) + 32  # RFC 7541 section 4.1
        if size > self._max_size:
            self._dyn.clear()
            self._size = 0
            return
        self._dyn.appendleft(header)
        self._size += size
        self._evict()

    def _evict(self) -> None:
        while self._size > self._max_size:
            n, v = self._dyn.pop()
            self._size -= len(n) + len(v) + 32

    def _resize(self, new_size: int) -> None:
        if new_size > self.max_table_size:
            raise HpackError(f"table size {new_size} above the advertised {self.max_table_size}")
        self._max_size = new_size
        self._evict()

    def decode(self, block: bytes) -> Headers:
        hit = self._bound.get(block)
        if hit is not None:
            return hit
        pure = self._pure.get(block)
        if pure is not None:
            result, adds, resize = pure
            if not adds and resize < 0:
                return result
            if block == self._steady:
                return result  # replaying it would leave the table exactly as it is
            if block == self._last_pure:
                # The same block twice in a row: once the table holds nothing but copies of
                # its entries, adding them again changes nothing; notice that once, then skip.
                before = (tuple(self._dyn), self._max_size)
                self._replay(adds, resize)
                if (tuple(self._dyn), self._max_size) == before:
                    self._steady = block
                    return result
            else:
                self._replay(adds, resize)
            self._last_pure = block
            self._bound.clear()
            return result
        return self._decode(block)

    def _replay(self, adds: tuple[Header, ...], resize: int) -> None:
        self._steady = None
        if resize >= 0:
            self._resize(resize)
        for h in adds:
            self._add(h)

    def _decode(self, block: bytes) -> Headers:
        out: list[Header] = []
        adds: list[Header] = []
        resize = -1
        dynamic_ref = False
        pos = 0
        n = len(block)
        size = 0
        limit = self.max_list_size
        while pos < n:
            b = block[pos]
            if b & 0x80:  # indexed field
                index, pos = _int(block, pos, 7)
                dynamic_ref |= index > _STATIC_LEN
                header = self._entry(index)
            elif b & 0x40:  # literal with incremental indexing
                index, pos = _int(block, pos, 6)
                dynamic_ref |= index > _STATIC_LEN
                header, pos = self._literal(block, pos, index)
                self._add(header)
                adds.append(header)
            elif b & 0x20:  # dynamic table size update
                if out:
                    raise HpackError("table size update after a header field")
                resize, pos = _int(block, pos, 5)
                self._resize(resize)
                continue
            else:  # literal without indexing (0x00) or never indexed (0x10)
                index, pos = _int(block, pos, 4)
                dynamic_ref |= index > _STATIC_LEN
                header, pos = self._literal(block, pos, index)
            size += len(header[0]) + len(header[1]) + 32
            if size > limit:
                raise HeaderListTooLarge(f"header list larger than {limit} bytes")
            out.append(header)
        result = tuple(out)
        changed = bool(adds) or resize >= 0
        if changed:
            self._bound.clear()  # indices moved
            self._steady = self._last_pure = None
        if not dynamic_ref:
            if len(self._pure) >= _CACHE_MAX:
                self._pure.clear()
            self._pure[block] = (result, tuple(adds), resize)
        elif not changed:
            if len(self._bound) >= _CACHE_MAX:
                self._bound.clear()
            self._bound[block] = result
        return result

    def _literal(self, block: bytes, pos: int, index: int) -> tuple[Header, int]:
        if index:
            name = self._entry(index)[0]
        else:
            raw_name, pos = _str(block, pos)
            name = raw_name.decode("latin-1")
        value, pos = _str(block, pos)
        return (name, value.decode("latin-1")), pos

    @property
    def table_size(self) -> int:
        return self._size

    @property
    def table_entries(self) -> int:
        return len(self._dyn)


def _enc_int(value: int, prefix: int, first: int) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _enc_str(raw: bytes) -> bytes:
    return _enc_int(len(raw), 7, 0) + raw


def _bytes(s: str) -> bytes:
    try:
        return s.encode("latin-1")
    except UnicodeEncodeError:
        return s.encode("utf-8")


_STATIC_EXACT: dict[Header, int] = {}
_STATIC_NAME: dict[str, int] = {}
for _i, (_n, _v) in enumerate(_STATIC_STR, 1):
    _STATIC_EXACT.setdefault((_n, _v), _i)
    _STATIC_NAME.setdefault(_n, _i)


class HpackEncoder:
    """Stateless towards the peer (no dynamic table), so one instance may serve many
    connections; it remembers the encoding of pairs it has seen."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[Header, bytes] = {}

    def field(self, name: str, value: str) -> bytes:
        key = (name, value)
        enc = self._cache.get(key)
        if enc is None:
            enc = encode_field(name, value)
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[key] = enc
        return enc

    def encode(self, headers: Iterable[Header]) -> bytes:
        cache = self._cache
        parts = []
        for h in headers:
            enc = cache.get(h)
            if enc is None:
                enc = self.field(h[0], h[1])
            parts.append(enc)
        return b"".join(parts)


def encode_field(name: str, value: str) -> bytes:
    """One field: the static table entry when it matches exactly, else a literal without
    indexing (with the static table's index for the name when there is one)."""
    idx = _STATIC_EXACT.get((name, value))
    if idx is not None:
        return _enc_int(idx, 7, 0x80)
    name_idx = _STATIC_NAME.get(name)
    if name_idx is not None:
        return _enc_int(name_idx, 4, 0x00) + _enc_str(_bytes(value))
    return b"\x00" + _enc_str(_bytes(name)) + _enc_str(_bytes(value))
