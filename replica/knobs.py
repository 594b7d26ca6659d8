"""Test knobs: added latency, injected UNAVAILABLE errors and a reported fake GPU load.

All knobs are off by default, so a replica without knob flags behaves like TF Serving. They apply
to inference calls only (Predict, Classify, Regress, MultiInference and their REST forms), never to
status or metadata. ``Knobs`` is immutable; a change builds a new value after validating every
field, so a bad update changes nothing.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass

# The message a TF Serving replica gives when its batching queue is full: the usual reason a
# real replica answers UNAVAILABLE under load.
INJECTED_ERROR_MESSAGE = "The batch scheduling queue to which this task was submitted is full"

# Fake framebuffer size reported with --gpu_util (MiB), as a 16 GiB card.
FAKE_GPU_MEMORY_MIB = 16384


@dataclass(frozen=True)
class Knobs:
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rate: float = 0.0
    gpu_util: float | None = None

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.latency_jitter_ms < 0:
            raise ValueError("latency_ms and latency_jitter_ms must be >= 0")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error_rate must be within [0, 1]")
        if self.gpu_util is not None and not 0.0 <= self.gpu_util <= 1.0:
            raise ValueError("gpu_util must be within [0, 1] or null")

    def updated(self, changes: Mapping[str, object]) -> Knobs:
        """A new Knobs with ``changes`` applied; ValueError names the first bad key or value."""
        names = {f.name for f in dataclasses.fields(self)}
        values: dict[str, float | None] = {}
        for key, value in changes.items():
            if key not in names:
                raise ValueError(f"unknown knob: {key}")
            if value is None and key == "gpu_util":
                values[key] = None
            elif isinstance(value, int | float) and not isinstance(value, bool):
                values[key] = float(value)
            else:
                raise ValueError(f"knob {key} needs a number, got {value!r}")
        return dataclasses.replace(self, **values)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)

    def delay_s(self, rng: random.Random) -> float:
        """Seconds to hold an inference call: fixed latency plus uniform jitter."""
        jitter = rng.uniform(0.0, self.latency_jitter_ms) if self.latency_jitter_ms else 0.0
        return (self.latency_ms + jitter) / 1000.0

    def should_fail(self, rng: random.Random) -> bool:
        return self.error_rate > 0.0 and rng.random() < self.error_rate

    def gpu_memory_mib(self) -> tuple[int, int]:
        """(used, free) framebuffer MiB that follow the fake utilisation."""
        util = self.gpu_util or 0.0
        used = int(FAKE_GPU_MEMORY_MIB * util)
        return used, FAKE_GPU_MEMORY_MIB - used
