"""Similarity cache (opt-in per model): answer a request whose input vector is close enough, by
cosine similarity, to one answered before.

One `SimilarityIndex` serves one scope (model, resolved version, signature, method); the caller
keeps one per scope and drops it when the version changes, so a hit never crosses versions.

Search is exact: rows are kept L2-normalised in a preallocated float32 matrix (a ring: when
full, the oldest row is overwritten), and a lookup is one matrix-vector product and an argmax.
Measured on the 2-core build machine, single query, dim 128: 1k rows ~18 us, 10k ~90 us, 100k
~2.7 ms. faiss was measured too and is deliberately not used: its IndexFlatIP was slower than
numpy for single queries (10k x 128: ~530 us), and IndexHNSWFlat, fast to search, supports no
removal (a ring overwrites rows), builds at ~150 us per row and can miss the nearest row. Keep
`max_entries` so that a lookup stays well under a millisecond (about 10k rows at dim 128).

Verification and self-tightening: a hit is only as good as the threshold. `should_verify(rng)`
marks a configured fraction of hits for a background re-check (the gateway calls the replica
anyway and compares answers); `record_verification(agreed)` feeds a sliding window. When the
window holds at least `min_verifications` results and its false-hit rate exceeds
`target_false_hit_rate`, the threshold rises by `tighten_step` (capped at `max_threshold`,
0.9999) and the window restarts, so each tightening is judged on fresh evidence. The threshold
never loosens by itself: an operator lowers it in config.

numpy is imported when an index is constructed, never at module import, so a gateway without a
similarity cache configured never loads it.

What must always hold: `lookup` returns only an entry whose stored vector has cosine >= the
current threshold with the query; vectors of the wrong length, zero vectors and vectors with
NaN / Infinity are refused (None / False), never stored.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.cache.entry import Entry

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

MAX_THRESHOLD = 0.9999
DEFAULT_MAX_VALUES = 1 << 16


@dataclass(slots=True)
class SimilarityStats:
    lookups: int = 0
    hits: int = 0
    adds: int = 0
    refused: int = 0  # vectors of the wrong size, zero or not finite
    verifications: int = 0
    false_hits: int = 0
    tightenings: int = 0


class SimilarityIndex:
    def __init__(
        self,
        dim: int,
        threshold: float,
        max_entries: int,
        *,
        verify_fraction: float = 0.01,
        target_false_hit_rate: float = 0.01,
        tighten_step: float = 0.005,
        max_threshold: float = MAX_THRESHOLD,
        verify_window: int = 200,
        min_verifications: int = 20,
    ) -> None:
        if dim < 1 or max_entries < 1:
            raise ValueError(f"SimilarityIndex: dim and max_entries must be >= 1, got {dim}, {max_entries}")
        if not 0.0 < max_threshold <= MAX_THRESHOLD:
            raise ValueError(f"SimilarityIndex: max_threshold must be in (0, {MAX_THRESHOLD}]")
        if not 0.0 < threshold <= max_threshold:
            raise ValueError(f"SimilarityIndex: threshold must be in (0, {max_threshold}], got {threshold}")
        if not 0.0 <= verify_fraction <= 1.0 or not 0.0 <= target_false_hit_rate <= 1.0:
            raise ValueError("SimilarityIndex: verify_fraction and target_false_hit_rate must be in [0, 1]")
        if tighten_step <= 0 or verify_window < 1 or not 1 <= min_verifications <= verify_window:
            raise ValueError(
                "SimilarityIndex: need tighten_step > 0 and 1 <= min_verifications <= verify_window"
            )
        import numpy  # lazy on purpose: only models with a similarity cache pay for numpy

        self._np: Any = numpy
        self.dim = dim
        self.threshold = threshold
        self.max_entries = max_entries
        self.verify_fraction = verify_fraction
        self.target_false_hit_rate = target_false_hit_rate
        self.tighten_step = tighten_step
        self.max_threshold = max_threshold
        self.min_verifications = min_verifications
        self._matrix: NDArray[np.float32] = numpy.zeros((max_entries, dim), dtype=numpy.float32)
        self._entries: list[Entry | None] = [None] * max_entries
        self._count = 0
        self._next = 0
        self._window: deque[bool] = deque(maxlen=verify_window)  # True = a false hit
        #: The window's false-hit rate as of the latest re-check, taken before a tightening
        #: restarts the window: what to report, so the figure that tripped is what is seen.
        self.measured_false_hit_rate = 0.0
        self.stats = SimilarityStats()

    def __len__(self) -> int:
        return self._count

    def _normalise(self, vec: Sequence[float]) -> NDArray[np.float32] | None:
        if len(vec) != self.dim:
            return None
        arr: NDArray[np.float32] = self._np.asarray(vec, dtype=self._np.float32)
        norm = float(self._np.linalg.norm(arr))
        if not math.isfinite(norm) or norm == 0.0:
            return None
        return arr / norm

    def add(self, vec: Sequence[float], entry: Entry) -> bool:
        """Remember `entry` under `vec`; when full, the oldest row gives way. False if refused."""
        unit = self._normalise(vec)
        if unit is None:
            self.stats.refused += 1
            return False
        self._matrix[self._next] = unit
        self._entries[self._next] = entry
        self._next = (self._next + 1) % self.max_entries
        self._count = min(self._count + 1, self.max_entries)
        self.stats.adds += 1
        return True

    def lookup(self, vec: Sequence[float]) -> tuple[Entry, float] | None:
        """(entry, cosine) of the nearest stored vector when its cosine >= threshold, else None."""
        self.stats.lookups += 1
        if self._count == 0:
            return None
        unit = self._normalise(vec)
        if unit is None:
            self.stats.refused += 1
            return None
        scores = self._matrix[: self._count] @ unit
        best = int(scores.argmax())
        score = float(scores[best])
        entry = self._entries[best]
        if entry is None or score < self.threshold:
            return None
        self.stats.hits += 1
        return entry, score

    def clear(self) -> None:
        self._entries = [None] * self.max_entries
        self._count = 0
        self._next = 0

    def should_verify(self, rng: random.Random) -> bool:
        """Call once per hit: True for the fraction of hits to re-check against the replica."""
        return rng.random() < self.verify_fraction

    def record_verification(self, agreed: bool) -> None:
        """Feed one re-check result; tightens the threshold when false hits pass the target."""
        self.stats.verifications += 1
        if not agreed:
            self.stats.false_hits += 1
        self._window.append(not agreed)
        self.measured_false_hit_rate = self.false_hit_rate
        if len(self._window) < self.min_verifications:
            return
        if self.false_hit_rate > self.target_false_hit_rate and self.threshold < self.max_threshold:
            self.threshold = min(self.threshold + self.tighten_step, self.max_threshold)
            self.stats.tightenings += 1
            self._window.clear()

    @property
    def false_hit_rate(self) -> float:
        """False hits among the re-checks in the current window (0.0 when there are none)."""
        if not self._window:
            return 0.0
        return sum(self._window) / len(self._window)


def _flatten(value: object, out: list[float], max_values: int) -> bool:
    """Append the numbers of a nested list to `out`; False for anything that is not all numbers."""
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            number = float(item)
            if not math.isfinite(number) or len(out) >= max_values:
                return False
            out.append(number)
        else:
            return False  # strings, {"b64": ...}, booleans, nulls: not a vector
    return True


def _pick(mapping: dict[str, object], input_name: str | None) -> tuple[bool, object]:
    if input_name is not None:
        return (input_name in mapping), mapping.get(input_name)
    if len(mapping) == 1:
        return True, next(iter(mapping.values()))
    return False, None


def extract_vector(
    body_json: object, input_name: str | None, *, max_values: int = DEFAULT_MAX_VALUES
) -> list[float] | None:
    """The numbers of one input tensor of a REST predict body, flattened in order, or None.

    Understood forms (TF Serving REST predict):
    - row form, named inputs: {"instances": [{"x": [..]}, {"x": [..]}]} -> the rows' "x" values;
    - row form, bare: {"instances": [[..], [..]]} or {"instances": [1.0, 2.0]} -> all the numbers;
    - columnar form: {"inputs": {"x": [[..]]}} -> "x"; {"inputs": [[..]]} -> all the numbers.
    With `input_name` None, a mapping with exactly one input is taken as that input. None for any
    other shape, non-numeric values (strings, b64), NaN / Infinity, or more than `max_values`.
    """
    if not isinstance(body_json, dict):
        return None
    out: list[float] = []
    if "instances" in body_json and "inputs" not in body_json:
        rows = body_json["instances"]
        if not isinstance(rows, list) or not rows:
            return None
        if all(isinstance(row, dict) for row in rows):
            for row in rows:
                found, value = _pick(row, input_name)
                if not found or not _flatten(value, out, max_values):
                    return None
        elif not _flatten(rows, out, max_values):
            return None
    elif "inputs" in body_json and "instances" not in body_json:
        columns = body_json["inputs"]
        if isinstance(columns, dict):
            found, value = _pick(columns, input_name)
            if not found or not _flatten(value, out, max_values):
                return None
        elif not _flatten(columns, out, max_values):
            return None
    else:
        return None
    return out or None
