"""Tenants (`tenants:`): who may call which models, at what priority, within which limits, and
with which share of a saturated fleet.

What must always hold: a key belongs to one tenant at most; `anonymous` (keyless calls) has no
keys; keys are given plain (16+ characters) or as `sha256:<64 hex>` and are never shown again
(the admin API and the metrics name tenants, never keys).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from gateway.config.base import Frozen

Priority = Literal["critical", "standard", "sheddable"]
ANONYMOUS = "anonymous"


class TenantLimits(Frozen):
    rps: float | None = Field(default=None, gt=0)  # sustained calls per second
    burst: float | None = Field(default=None, gt=0)  # calls at once above the rate (default: rps)
    concurrency: int | None = Field(default=None, gt=0)  # calls in flight at once


class Tenant(Frozen):
    keys: list[str] = []
    models: list[str] | Literal["*"] = "*"
    priority: Priority = "standard"
    limits: TenantLimits = TenantLimits()
    weight: float = Field(default=1.0, gt=0)  # share of a saturated queue, relative to others

    @field_validator("keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        for k in v:
            if k.startswith("sha256:"):
                if not re.fullmatch(r"sha256:[0-9a-f]{64}", k):
                    raise ValueError("a key 'sha256:...' needs 64 lower-case hex digits")
            elif len(k) < 16:
                raise ValueError("a key needs at least 16 characters (or give 'sha256:<hex>')")
        return v

    def allows(self, model: str) -> bool:
        return self.models == "*" or model in self.models


class Auth(Frozen):
    """Calls with a missing or unknown key, per client address: how fast they are answered
    (beyond it, 429), so that guessing keys is slow."""

    failures_per_s: float = Field(default=2.0, gt=0)
    burst: float = Field(default=10.0, ge=1)
