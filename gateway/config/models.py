"""Per-model configuration (`models.NAME`): labels, route rules and splits, sticky sessions,
balance, caches, shadow traffic, rollouts, hedging, timeouts and API keys.

What must always hold: every target a route, shadow or rollout names is a label, `version:N` or
`pool:NAME` (the whole-file check in `schema.GatewayConfig` resolves labels and pools).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gateway.config.base import Frozen


class HeaderMatch(Frozen):
    exact: str | None = None
    regex: str | None = None
    present: bool | None = None

    @field_validator("regex")
    @classmethod
    def _re(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"invalid regex {v!r}: {exc}") from exc
        return v


Method = Literal["predict", "classify", "regress", "multi_inference", "metadata", "status"]


class Match(Frozen):
    headers: dict[str, str | HeaderMatch] = {}
    methods: list[Method] | None = None
    protocols: list[Literal["rest", "grpc"]] | None = None


TARGET_RE = re.compile(r"^(version:\d+|pool:[\w.-]+|[\w.-]+)$")


class Route(Frozen):
    match: Match | None = None
    split: dict[str, float]
    bucket_by: str | None = None

    @field_validator("split")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("split needs at least one target")
        for target, w in v.items():
            if not TARGET_RE.match(target):
                raise ValueError(f"target {target!r} is not a label, 'version:N' or 'pool:NAME'")
            if w < 0:
                raise ValueError(f"weight of {target!r} is negative ({w})")
        if sum(v.values()) <= 0:
            raise ValueError("weights must sum to a positive number")
        return v


class Sticky(Frozen):
    header: str | None = None
    cookie: str | None = None
    load_factor: float = Field(default=1.25, gt=1.0)

    @model_validator(mode="after")
    def _some_key(self) -> Sticky:
        if not self.header and not self.cookie:
            raise ValueError("sticky needs a header or a cookie to take the key from")
        return self


class ExactCache(Frozen):
    ttl_s: float = Field(default=60.0, gt=0)
    max_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    max_entry_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    # An entry this much past its TTL may still answer when no tier can (x-infergate-tier: stale).
    stale_if_error_s: float = Field(default=0.0, ge=0)


FallbackReason = Literal["unavailable", "overloaded", "timeout"]


class Fallback(Frozen):
    """One tier of a model's fallback chain, tried in order when the target before it cannot
    answer for one of the `on` reasons: `unavailable` (no healthy replica, or they refused or
    dropped the call), `overloaded` (429 / 503 / RESOURCE_EXHAUSTED, or shed at the gateway),
    `timeout` (the try ran past its time; the caller's deadline is never extended)."""

    target: str  # a label, "version:N" or "pool:NAME", as in split
    on: list[FallbackReason] = ["unavailable", "overloaded", "timeout"]

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: object) -> object:
        # YAML 1.1 (PyYAML) reads a bare `on:` key as the boolean true: take it as "on".
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @field_validator("target")
    @classmethod
    def _target(cls, v: str) -> str:
        if not TARGET_RE.match(v):
            raise ValueError(f"target {v!r} must be a label, 'version:N' or 'pool:NAME'")
        return v


class Brownout(Frozen):
    """Moving a share of a saturated pool's traffic to the fallback tier before shedding."""

    max_share: float = Field(default=0.5, ge=0, le=1)  # 0 turns brownout off


class SimilarityCache(Frozen):
    input: str | None = None
    threshold: float = Field(default=0.98, gt=0, lt=1)
    max_entries: int = Field(default=10000, gt=0)
    verify_fraction: float = Field(default=0.05, ge=0, le=1)
    target_false_hit_rate: float = Field(default=0.01, ge=0, le=1)


class ModelCache(Frozen):
    exact: ExactCache | None = None
    similarity: SimilarityCache | None = None


class Shadow(Frozen):
    target: str
    percent: float = Field(ge=0, le=100)


class Rollout(Frozen):
    canary: str
    stable: str = "stable"
    steps: list[float] = [5, 25, 50, 100]
    step_s: float = Field(default=60, gt=0)
    min_requests: int = Field(default=100, ge=0)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_p95_ratio: float = Field(default=1.2, gt=0)
    min_agreement: float = Field(default=0.99, ge=0, le=1)

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[float]) -> list[float]:
        if not v or any(s <= 0 or s > 100 for s in v) or v != sorted(v):
            raise ValueError("steps must be increasing percentages in (0, 100]")
        return v


class Hedge(Frozen):
    delay_ms: float | None = Field(default=None, gt=0)  # None: the model's observed p95
    fallback_ms: float = Field(default=50.0, gt=0)  # delay while no p95 has been observed
    budget_ratio: float = Field(default=0.05, ge=0, le=1)


class ModelConfig(Frozen):
    labels: dict[str, int] = {}
    routes: list[Route] = []
    sticky: Sticky | None = None
    balance: str = "round_robin"
    cache: ModelCache | None = None
    shadow: Shadow | None = None
    rollout: Rollout | None = None
    timeout_s: float = Field(default=30.0, gt=0)
    hedge: Hedge | None = None
    fallback: list[Fallback] = []  # tiers tried in order when the routed target cannot answer
    brownout: Brownout | None = None  # default with a fallback chain: max_share 0.5

    def brownout_share(self) -> float:
        """The largest share of this model's traffic a brownout may move to its fallback."""
        if not self.fallback:
            return 0.0
        return self.brownout.max_share if self.brownout is not None else Brownout().max_share
    api_keys: list[str] = []

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for k in v:
            if k.startswith("sha256:"):
                if not re.fullmatch(r"sha256:[0-9a-f]{64}", k):
                    raise ValueError("an api key 'sha256:...' needs 64 lower-case hex digits")
            elif len(k) < 16:
                raise ValueError("an api key needs at least 16 characters (or give 'sha256:<hex>')")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, int]) -> dict[str, int]:
        for label, version in v.items():
            if not re.fullmatch(r"[\w.-]+", label):
                raise ValueError(f"label {label!r} may hold only letters, digits, '_', '-', '.'")
            if version < 0:
                raise ValueError(f"label {label!r} points at a negative version")
        return v
