"""gateway.cache.similarity: near duplicates hit, far vectors miss, the threshold tightens on
false hits, and vectors are read out of REST predict bodies."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from gateway.cache.entry import Entry
from gateway.cache.similarity import MAX_THRESHOLD, SimilarityIndex, extract_vector

np = pytest.importorskip("numpy")


def unit_vectors(rng: random.Random, n: int, dim: int) -> list[list[float]]:
    return [[rng.gauss(0.0, 1.0) for _ in range(dim)] for _ in range(n)]


def test_near_duplicates_hit_and_far_vectors_miss() -> None:
    rng = random.Random(7)
    dim = 32
    index = SimilarityIndex(dim, threshold=0.99, max_entries=100)
    vectors = unit_vectors(rng, 50, dim)
    entries = [Entry(200, f"answer {i}".encode()) for i in range(50)]
    for v, e in zip(vectors, entries, strict=True):
        assert index.add(v, e)
    for i in (0, 17, 49):
        near = [x * 3.0 + rng.gauss(0.0, 0.01) for x in vectors[i]]  # scaled + tiny noise
        found = index.lookup(near)
        assert found is not None
        assert found[0] is entries[i] and found[1] >= 0.99
    for far in unit_vectors(random.Random(99), 20, dim):
        assert index.lookup(far) is None  # random directions in 32-d are nowhere near 0.99
    assert index.stats.hits == 3


def test_ring_overwrites_the_oldest_row_when_full() -> None:
    index = SimilarityIndex(2, threshold=0.999, max_entries=2)
    a, b, c = Entry(200, b"a"), Entry(200, b"b"), Entry(200, b"c")
    index.add([1.0, 0.0], a)
    index.add([0.0, 1.0], b)
    index.add([-1.0, 0.0], c)
    assert len(index) == 2
    assert index.lookup([1.0, 0.0]) is None
    hit = index.lookup([0.0, 1.0])
    assert hit is not None and hit[0] is b


def test_bad_vectors_are_refused() -> None:
    index = SimilarityIndex(3, threshold=0.9, max_entries=4)
    e = Entry(200, b"")
    assert not index.add([1.0, 2.0], e)
    assert not index.add([0.0, 0.0, 0.0], e)
    assert not index.add([1.0, float("nan"), 0.0], e)
    assert len(index) == 0
    index.add([1.0, 0.0, 0.0], e)
    assert index.lookup([1.0, 0.0]) is None
    assert index.stats.refused == 4


def test_false_hits_tighten_the_threshold_up_to_the_cap() -> None:
    index = SimilarityIndex(
        4, threshold=0.99, max_entries=8, target_false_hit_rate=0.1, tighten_step=0.005, min_verifications=10
    )
    for _ in range(9):
        index.record_verification(agreed=True)
    index.record_verification(agreed=False)  # 1/10 = 0.1: at target, not past it
    assert index.threshold == 0.99
    index.record_verification(agreed=False)  # 2/11 > 0.1
    assert index.threshold == pytest.approx(0.995)
    assert index.stats.tightenings == 1
    assert index.false_hit_rate == 0.0  # the window restarts after a tightening
    for _ in range(1000):
        index.record_verification(agreed=False)
    assert index.threshold == MAX_THRESHOLD
    assert index.stats.false_hits == 1002 and index.stats.verifications == 1011


def test_tightened_threshold_turns_a_borderline_hit_into_a_miss() -> None:
    index = SimilarityIndex(2, threshold=0.99, max_entries=4, target_false_hit_rate=0.0, min_verifications=1)
    index.add([1.0, 0.0], Entry(200, b"x"))
    borderline = [1.0, 0.12]  # cosine ~0.9929
    assert index.lookup(borderline) is not None
    index.record_verification(agreed=False)  # -> 0.995
    assert index.lookup(borderline) is None


def test_should_verify_samples_the_configured_fraction() -> None:
    index = SimilarityIndex(2, threshold=0.9, max_entries=2, verify_fraction=0.2)
    rng = random.Random(1234)
    marked = sum(index.should_verify(rng) for _ in range(10_000))
    assert 1_800 <= marked <= 2_200  # binomial(10000, 0.2): sd 40, so +-5 sd
    assert not any(SimilarityIndex(2, 0.9, 2, verify_fraction=0.0).should_verify(rng) for _ in range(100))


@pytest.mark.parametrize(
    "body,name,expected",
    [
        ({"instances": [1.0, 2.0, 5.0]}, None, [1.0, 2.0, 5.0]),
        ({"instances": [[1, 2], [3, 4]]}, None, [1.0, 2.0, 3.0, 4.0]),
        ({"instances": [{"x": [1.0, 2.0]}, {"x": [3.0, 4.0]}]}, "x", [1.0, 2.0, 3.0, 4.0]),
        ({"instances": [{"x": [1.0], "y": "s"}]}, "x", [1.0]),
        ({"instances": [{"x": [1.0]}]}, None, [1.0]),
        ({"inputs": {"x": [[1.0, 2.0]]}}, "x", [1.0, 2.0]),
        ({"inputs": {"x": [[1.0]], "y": [[2.0]]}}, "y", [2.0]),
        ({"inputs": [[1.5, 2.5]]}, None, [1.5, 2.5]),
        ({"signature_name": "s", "instances": [7]}, None, [7.0]),
        ({"instances": [{"x": [1.0], "y": [2.0]}]}, None, None),  # two inputs, none named
        ({"instances": [{"x": [1.0]}]}, "z", None),
        ({"instances": [{"b64": "AAAA"}]}, None, None),
        ({"instances": ["text"]}, None, None),
        ({"instances": [True, 1.0]}, None, None),
        ({"instances": [float("nan")]}, None, None),
        ({"instances": []}, None, None),
        ({"instances": [1.0], "inputs": [1.0]}, None, None),
        ({"instances": [{"x": [1.0]}, [2.0]]}, "x", None),
        ([1.0, 2.0], None, None),
    ],
)
def test_extract_vector(body: object, name: str | None, expected: list[float] | None) -> None:
    assert extract_vector(body, name) == expected


def test_extract_vector_is_bounded() -> None:
    assert extract_vector({"instances": [1.0] * 10}, None, max_values=9) is None
    assert extract_vector({"instances": [1.0] * 10}, None, max_values=10) == [1.0] * 10


def test_importing_the_cache_package_does_not_import_numpy() -> None:
    code = "import sys, gateway.cache; assert 'numpy' not in sys.modules, 'numpy loaded'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    code = (
        "import sys; from gateway.cache import SimilarityIndex; SimilarityIndex(2, 0.9, 2); "
        "assert 'numpy' in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
