"""A small raster line chart encoded as PNG, standard library only (zlib + struct).

Owns the timeline picture of `infergate scale simulate`: stacked panels sharing a time axis, each
with axes, tick labels, a legend and line or step series. Text uses a built-in 3x5 pixel font
(upper case, digits, a few signs), scaled up.

PNG layout per the PNG specification (W3C, 2003): signature, IHDR (8-bit truecolour), one IDAT
holding the zlib stream of filter-type-0 scanlines, IEND; each chunk length-prefixed and CRC-32
checked. Always true: pure (returns bytes, writes no file) and deterministic for the same input.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

RGB = tuple[int, int, int]

_GLYPHS: dict[str, str] = {
    "0": "###/#.#/#.#/#.#/###", "1": ".#./##./.#./.#./###", "2": "###/..#/###/#../###",
    "3": "###/..#/###/..#/###", "4": "#.#/#.#/###/..#/..#", "5": "###/#../###/..#/###",
    "6": "###/#../###/#.#/###", "7": "###/..#/..#/.#./.#.", "8": "###/#.#/###/#.#/###",
    "9": "###/#.#/###/..#/###", "A": ".#./#.#/###/#.#/#.#", "B": "##./#.#/##./#.#/##.",
    "C": ".##/#../#../#../.##", "D": "##./#.#/#.#/#.#/##.", "E": "###/#../##./#../###",
    "F": "###/#../##./#../#..", "G": ".##/#../#.#/#.#/.##", "H": "#.#/#.#/###/#.#/#.#",
    "I": "###/.#./.#./.#./###", "J": "..#/..#/..#/#.#/.#.", "K": "#.#/#.#/##./#.#/#.#",
    "L": "#../#../#../#../###", "M": "#.#/###/###/#.#/#.#", "N": "##./#.#/#.#/#.#/#.#",
    "O": ".#./#.#/#.#/#.#/.#.", "P": "##./#.#/##./#../#..", "Q": ".#./#.#/#.#/##./.##",
    "R": "##./#.#/##./#.#/#.#", "S": ".##/#../.#./..#/##.", "T": "###/.#./.#./.#./.#.",
    "U": "#.#/#.#/#.#/#.#/###", "V": "#.#/#.#/#.#/#.#/.#.", "W": "#.#/#.#/###/###/#.#",
    "X": "#.#/#.#/.#./#.#/#.#", "Y": "#.#/#.#/.#./.#./.#.", "Z": "###/..#/.#./#../###",
    ".": ".../.../.../.../.#.", "/": "..#/..#/.#./#../#..", "-": ".../.../###/.../...",
    ":": ".../.#./.../.#./...", "%": "#.#/..#/.#./#../#.#", "=": ".../###/.../###/...",
    "(": ".#./#../#../#../.#.", ")": ".#./..#/..#/..#/.#.", " ": ".../.../.../.../...",
}

BLACK: RGB = (0, 0, 0)
GREY: RGB = (150, 150, 150)
LIGHT: RGB = (225, 225, 225)
WHITE: RGB = (255, 255, 255)


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """PNG bytes for `rgb`, row-major 3 bytes per pixel."""
    if len(rgb) != width * height * 3:
        raise ValueError(f"expected {width * height * 3} bytes of RGB, got {len(rgb)}")
    stride = width * 3
    raw = b"".join(b"\x00" + rgb[y * stride:(y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(raw, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class Canvas:
    """An RGB raster with the few drawing operations the chart needs; (0, 0) is top left."""

    def __init__(self, width: int, height: int, background: RGB = WHITE) -> None:
        self.width = width
        self.height = height
        self._px = bytearray(bytes(background) * (width * height))

    def pixel(self, x: int, y: int, color: RGB) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self._px[i:i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: RGB) -> None:
        """Fill the rectangle with corners (x0, y0) and (x1, y1), inclusive."""
        for y in range(max(0, min(y0, y1)), min(self.height, max(y0, y1) + 1)):
            for x in range(max(0, min(x0, x1)), min(self.width, max(x0, x1) + 1)):
                self.pixel(x, y, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: RGB, width: int = 1, dash: int = 0) -> None:
        """Bresenham's line algorithm (Bresenham, IBM Systems Journal 4(1), 1965), thickened to a
        square pen of `width`; `dash` > 0 draws `dash` pixels on, `dash` off."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        half = width // 2
        step = 0
        while True:
            if dash <= 0 or (step // dash) % 2 == 0:
                for ox in range(-half, width - half):
                    for oy in range(-half, width - half):
                        self.pixel(x0 + ox, y0 + oy, color)
            if x0 == x1 and y0 == y1:
                return
            step += 1
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, s: str, color: RGB = BLACK, scale: int = 2) -> int:
        """Draw `s` (upper-cased; unknown characters as blanks) with its top left at (x, y); returns
        the x just past it."""
        for ch in s.upper():
            rows = _GLYPHS.get(ch, _GLYPHS[" "]).split("/")
            for ry, row in enumerate(rows):
                for rx, bit in enumerate(row):
                    if bit == "#":
                        self.rect(x + rx * scale, y + ry * scale, x + rx * scale + scale - 1,
                                  y + ry * scale + scale - 1, color)
            x += 4 * scale
        return x

    def png(self) -> bytes:
        return encode_png(self.width, self.height, bytes(self._px))


def text_width(s: str, scale: int = 2) -> int:
    return len(s) * 4 * scale


@dataclass(frozen=True)
class Series:
    label: str
    color: RGB
    values: Sequence[float | None]  # None leaves a gap
    step: bool = False  # hold each value until the next point (replica counts)
    width: int = 2


@dataclass(frozen=True)
class Panel:
    title: str
    series: Sequence[Series]
    hlines: Sequence[tuple[float, RGB]] = field(default_factory=tuple)  # dashed reference lines
    y_max: float | None = None  # None: fit the data


def _nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is >= value."""
    if value <= 0:
        return 1.0
    base = 10.0 ** math.floor(math.log10(value))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= m * base + 1e-12:
            return m * base
    return 10.0 * base


def _label(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}".rstrip("0")


def timeline_png(
    xs: Sequence[float], panels: Sequence[Panel], width: int = 1000, panel_h: int = 200
) -> bytes:
    """Stacked panels over the shared x values `xs` (seconds), returned as PNG bytes."""
    if not xs:
        raise ValueError("no points to draw")
    left, right, top_pad, bottom_pad = 70, 20, 30, 40
    height = len(panels) * (panel_h + top_pad) + bottom_pad
    c = Canvas(width, height)
    x_lo, x_hi = min(xs), max(xs)
    x_span = (x_hi - x_lo) or 1.0
    plot_w = width - left - right

    def px(x: float) -> int:
        return left + round((x - x_lo) / x_span * (plot_w - 1))

    x_ticks = [x_lo + x_span * i / 5 for i in range(6)]
    for n, panel in enumerate(panels):
        top = n * (panel_h + top_pad) + top_pad
        bottom = top + panel_h - 1
        data = [v for s in panel.series for v in s.values if v is not None]
        data += [y for y, _ in panel.hlines]
        y_max = panel.y_max if panel.y_max is not None else _nice_max(max(data, default=1.0))

        def py(y: float, bottom: int = bottom, y_max: float = y_max) -> int:
            return bottom - round(min(max(y, 0.0), y_max * 1.05) / (y_max * 1.05) * (panel_h - 1))

        for i in range(5):  # grid and y tick labels at 0, 1/4 .. 4/4 of y_max
            yv = y_max * i / 4
            c.line(left, py(yv), width - right, py(yv), LIGHT)
            label = _label(yv)
            c.text(left - 6 - text_width(label), py(yv) - 5, label, GREY)
        for xv in x_ticks:
            c.line(px(xv), top, px(xv), bottom, LIGHT)
        for y, color in panel.hlines:
            c.line(left, py(y), width - right, py(y), color, dash=6)
        for s in panel.series:
            prev: tuple[int, int] | None = None
            for x, v in zip(xs, s.values, strict=True):
                if v is None:
                    prev = None
                    continue
                point = (px(x), py(v))
                if prev is not None:
                    if s.step:
                        c.line(prev[0], prev[1], point[0], prev[1], s.color, s.width)
                        c.line(point[0], prev[1], point[0], point[1], s.color, s.width)
                    else:
                        c.line(prev[0], prev[1], point[0], point[1], s.color, s.width)
                prev = point
        c.line(left, top, left, bottom, BLACK)  # axes drawn last so series never hide them
        c.line(left, bottom, width - right, bottom, BLACK)
        c.text(left, top - 20, panel.title)
        lx = width - right
        for s in reversed(panel.series):  # legend, right-aligned
            lx -= text_width(s.label) + 24
            c.rect(lx, top - 18, lx + 12, top - 8, s.color)
            c.text(lx + 16, top - 20, s.label)
    base = height - bottom_pad
    for xv in x_ticks:
        label = _label(round(xv))
        c.text(px(xv) - text_width(label) // 2, base + 6, label)
    c.text(width - right - text_width("TIME S"), base + 20, "TIME S", GREY)
    return c.png()
