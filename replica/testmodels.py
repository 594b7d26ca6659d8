"""Small real SavedModels for tests and the demo, written with TensorFlow in a second or two.

- ``half_plus_two/1``: TF Serving's own test model rebuilt (graph mode, SavedModelBuilder): y =
  0.5 * x + 2 with TF Serving's signatures serving_default (x -> y), regress_x_to_y,
  regress_x_to_y2 (0.5 * x + 3), regress_x2_to_y3 (on x2) and classify_x_to_y, the last three
  over serialized tf.Examples with float features "x" and "x2". ``half_plus_two/2`` is the same
  graph with y = 0.5 * x + 3 (and y2 = 0.5 * x + 4), so two versions differ in their answers.
- ``embed/1``: serving_default maps x float [-1, 4] to its L2-normalised "embedding" [-1, 4];
  signature "with_norm" also returns "norm" [-1] (a two-output signature).

Each version is built in a temporary folder and renamed into place, so a polling server never
sees half a model. The output is deterministic (fixed values, no random initialisers).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
from collections.abc import Callable

import tensorflow as tf

_v1 = tf.compat.v1
_PREDICT = "tensorflow/serving/predict"
_CLASSIFY = "tensorflow/serving/classify"
_REGRESS = "tensorflow/serving/regress"


def _signature(inputs: dict[str, tf.Tensor], outputs: dict[str, tf.Tensor], method: str) -> object:
    info = _v1.saved_model.utils.build_tensor_info
    return _v1.saved_model.signature_def_utils.build_signature_def(
        {k: info(v) for k, v in inputs.items()}, {k: info(v) for k, v in outputs.items()}, method
    )


def _half_plus(b: float, c: float) -> Callable[[], dict[str, object]]:
    """The graph of TF Serving's saved_model_half_plus_two.py with y = 0.5 x + b, y2 = 0.5 x + c."""

    def build() -> dict[str, object]:
        a = _v1.Variable(0.5, name="a")
        vb = _v1.Variable(b, name="b")
        vc = _v1.Variable(c, name="c")
        serialized = _v1.placeholder(tf.string, name="tf_example", shape=[None])
        parsed = _v1.io.parse_example(
            serialized,
            {
                "x": _v1.io.FixedLenFeature([1], dtype=tf.float32),
                "x2": _v1.io.FixedLenFeature([1], dtype=tf.float32, default_value=[0.0]),
            },
        )
        x = tf.identity(parsed["x"], name="x")
        y = tf.identity(tf.add(tf.multiply(a, x), vb), name="y")
        y2 = tf.identity(tf.add(tf.multiply(a, x), vc), name="y2")
        x2 = tf.identity(parsed["x2"], name="x2")
        a2 = _v1.Variable(0.5, name="a2")
        c2 = _v1.Variable(c, name="c2")
        y3 = tf.identity(tf.add(tf.multiply(a2, x2), c2), name="y3")
        return {
            "regress_x_to_y": _signature({"inputs": serialized}, {"outputs": y}, _REGRESS),
            "regress_x_to_y2": _signature({"inputs": serialized}, {"outputs": y2}, _REGRESS),
            "regress_x2_to_y3": _signature({"inputs": x2}, {"outputs": y3}, _REGRESS),
            "classify_x_to_y": _signature({"inputs": serialized}, {"scores": y}, _CLASSIFY),
            "serving_default": _signature({"x": x}, {"y": y}, _PREDICT),
        }

    return build


def _embed() -> dict[str, object]:
    x = _v1.placeholder(tf.float32, name="x", shape=[None, 4])
    norm = tf.identity(tf.norm(x, axis=1), name="norm")
    embedding = tf.identity(tf.math.l2_normalize(x, axis=1), name="embedding")
    return {
        "serving_default": _signature({"x": x}, {"embedding": embedding}, _PREDICT),
        "with_norm": _signature({"x": x}, {"embedding": embedding, "norm": norm}, _PREDICT),
    }


def _write(version_dir: pathlib.Path, build: Callable[[], dict[str, object]]) -> None:
    version_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = version_dir.parent / f".staging-{version_dir.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    graph = tf.Graph()
    with graph.as_default(), _v1.Session(graph=graph) as session:
        signatures = build()
        session.run(_v1.global_variables_initializer())
        builder = _v1.saved_model.Builder(str(staging))
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
        builder.save()
    shutil.rmtree(version_dir, ignore_errors=True)
    os.rename(staging, version_dir)


def make_test_models(dest: pathlib.Path) -> None:
    """Write half_plus_two/{1,2} and embed/1 under ``dest`` (replacing what is there)."""
    dest = pathlib.Path(dest)
    _write(dest / "half_plus_two" / "1", _half_plus(2.0, 3.0))
    _write(dest / "half_plus_two" / "2", _half_plus(3.0, 4.0))
    _write(dest / "embed" / "1", _embed)


def main(argv: list[str] | None = None) -> int:
    """``infergate make-test-models DIR``."""
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: infergate make-test-models DIR", file=sys.stderr)
        return 2
    dest = pathlib.Path(args[0]).resolve()
    make_test_models(dest)
    for path in sorted(p for p in dest.glob("*/*") if p.is_dir() and p.name.isdigit()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
