"""The replica's Prometheus page, in TF Serving's own text layout, plus test-only gauges.

TF Serving names its metrics with '/' and its exporter turns them into ':' names, which
prometheus_client refuses, so the page is written here (layout of util/prometheus_exporter.cc):
``# TYPE`` lines without HELP, metrics sorted by their TF name, counters as integers, histograms
with TF's exponential buckets (scale 10, growth 1.8, 33 buckets, plus -DBL_MAX and +Inf edges,
a value v counted in the first bucket whose limit is > v) and six-significant-digit numbers.

Extra lines, each clearly not TF Serving's:
- ``infergate_replica_inference_total{model_name,api,entrypoint,status}``: inference calls only
  (no status or metadata calls), so tests can count exactly what reached a replica even while
  something polls its model status over REST (TF Serving counts those in request_count too).
- ``DCGM_FI_DEV_GPU_UTIL`` / ``DCGM_FI_DEV_FB_USED`` / ``DCGM_FI_DEV_FB_FREE`` in dcgm-exporter's
  layout, only while the ``gpu_util`` knob is set.

All state lives on a ``ReplicaMetrics`` instance, touched only from the event loop thread.
"""

from __future__ import annotations

import bisect
import sys
from collections import defaultdict

from replica.knobs import Knobs

_DBL_MAX = sys.float_info.max


def _exponential_limits(scale: float, growth: float, count: int) -> list[float]:
    """tsl::monitoring::Buckets::Exponential, then widened to [-DBL_MAX, DBL_MAX]."""
    limits = []
    bound = scale
    for _ in range(count):
        limits.append(bound)
        bound *= growth
    return [-_DBL_MAX, *limits, _DBL_MAX]


_LATENCY_LIMITS = _exponential_limits(10.0, 1.8, 33)


def six_digits(value: float) -> str:
    """absl::StrCat(double): printf %g with six significant digits."""
    return f"{value:.6g}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> str:
    return ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))


class _Histogram:
    def __init__(self) -> None:
        self.buckets = [0] * len(_LATENCY_LIMITS)
        self.total = 0.0

    def add(self, value: float) -> None:
        index = min(bisect.bisect_right(_LATENCY_LIMITS, value), len(self.buckets) - 1)
        self.buckets[index] += 1
        self.total += value


class ReplicaMetrics:
    """Counters and histograms of one replica process."""

    _HIST_LABELS = ("model_name", "API", "entrypoint")
    _RUNTIME_LABELS = ("model_name", "API", "runtime")

    def __init__(self) -> None:
        self._request_count: dict[tuple[str, str], int] = defaultdict(int)
        self._request_latency: dict[tuple[str, str, str], _Histogram] = defaultdict(_Histogram)
        self._runtime_latency: dict[tuple[str, str, str], _Histogram] = defaultdict(_Histogram)
        self._inference: dict[tuple[str, str, str, str], int] = defaultdict(int)

    def record_request(self, model_name: str, status: str) -> None:
        """/tensorflow/serving/request_count{model_name, status}; status is a code name."""
        self._request_count[(model_name, status)] += 1

    def record_request_latency(self, model_name: str, api: str, entrypoint: str, micros: int) -> None:
        self._request_latency[(model_name, api, entrypoint)].add(float(micros))

    def record_runtime_latency(self, model_name: str, api: str, micros: int) -> None:
        self._runtime_latency[(model_name, api, "TF1")].add(float(micros))

    def record_inference(self, model_name: str, api: str, entrypoint: str, status: str) -> None:
        self._inference[(model_name, api, entrypoint, status)] += 1

    def render(self, knobs: Knobs) -> str:
        lines: list[str] = []
        name = ":tensorflow:serving:request_count"
        lines.append(f"# TYPE {name} counter")
        for key, count in self._request_count.items():
            lines.append(f"{name}{{{_labels(('model_name', 'status'), key)}}} {count}")
        self._render_histograms(
            lines, ":tensorflow:serving:request_latency", self._HIST_LABELS, self._request_latency
        )
        self._render_histograms(
            lines, ":tensorflow:serving:runtime_latency", self._RUNTIME_LABELS, self._runtime_latency
        )
        lines.append("# TYPE infergate_replica_inference_total counter")
        for ikey, count in self._inference.items():
            labels = _labels(("model_name", "api", "entrypoint", "status"), ikey)
            lines.append(f"infergate_replica_inference_total{{{labels}}} {count}")
        if knobs.gpu_util is not None:
            lines.extend(_dcgm_lines(knobs))
        return "\n".join(lines) + "\n"

    @staticmethod
    def _render_histograms(
        lines: list[str],
        name: str,
        label_names: tuple[str, ...],
        series: dict[tuple[str, str, str], _Histogram],
    ) -> None:
        lines.append(f"# TYPE {name} histogram")
        for key, hist in series.items():
            labels = _labels(label_names, key)
            cumulative = 0
            last = len(hist.buckets) - 1
            for i, count in enumerate(hist.buckets):
                cumulative += count
                limit = "+Inf" if i == last else six_digits(_LATENCY_LIMITS[i])
                lines.append(f'{name}_bucket{{{labels},le="{limit}"}} {cumulative}')
            lines.append(f"{name}_sum{{{labels}}} {six_digits(hist.total)}")
            lines.append(f"{name}_count{{{labels}}} {cumulative}")


def _dcgm_lines(knobs: Knobs) -> list[str]:
    """dcgm-exporter's gauges for one fake GPU."""
    used, free = knobs.gpu_memory_mib()
    labels = (
        'gpu="0",UUID="GPU-00000000-0000-0000-0000-000000000000",device="nvidia0",'
        'modelName="infergate fake GPU",Hostname="localhost"'
    )
    util = round((knobs.gpu_util or 0.0) * 100)
    return [
        "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).",
        "# TYPE DCGM_FI_DEV_GPU_UTIL gauge",
        f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} {util}",
        "# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).",
        "# TYPE DCGM_FI_DEV_FB_FREE gauge",
        f"DCGM_FI_DEV_FB_FREE{{{labels}}} {free}",
        "# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).",
        "# TYPE DCGM_FI_DEV_FB_USED gauge",
        f"DCGM_FI_DEV_FB_USED{{{labels}}} {used}",
    ]
