"""The canary rollout controller of one model: stepped weights, analysis, promote or roll back.

In the manner of Flagger and Argo Rollouts: the canary arm gets `steps[0]` percent of the
model's traffic; a step passes when `step_s` has elapsed AND the canary has answered
`min_requests` calls in it AND every check holds (error rate, p95 latency against the stable
arm, agreement of mirrored answers); then the next weight applies, and after the last step the
canary is promoted (the stable label moves to the canary's version; `label_overrides()` says
how). A check that fails rolls back at once, without waiting for the step to end: once a small
sample exists (`early_sample`), a rate whose 95% Wilson interval lies wholly on the wrong side
of its limit, or a canary whose median is slower than the limit allows the stable p95 to be,
fails the rollout. At the end of a step the plain point estimates must hold.

States: progressing | paused | promoted | rolled_back. Pausing holds the weight but keeps the
protection: a paused canary that fails a check is still rolled back.

Time is wall-clock seconds (`time.time`) because the state is persisted and continued by a
restarted gateway or by another gateway sharing the store. Measurements are per process; a fleet
judges its pooled measurements by lending them to the controller (`judged_by`), and a process
that must not decide (`decides = False`: it follows a fleet's leader) only records on the
request path.

What must always hold: `canary_weight()` is one of the configured steps while progressing or
paused, 0 after a rollback and 100 after promotion; every change of state or step increments
`rev`, and `merge_remote` only ever moves to a strictly newer (rev, updated_at) of the same
rollout identity.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from gateway.config import Rollout
from gateway.rollout.compare import compare_predictions as compare_predictions
from gateway.rollout.stats import LatencyHistogram, RolloutStats, wilson_interval

State = Literal["progressing", "paused", "promoted", "rolled_back"]
ACTIVE: tuple[State, ...] = ("progressing", "paused")
_HISTORY = 20
_LATENCY_EVERY = 16  # canary calls between two early latency checks (a quantile costs ~224 adds)


class RolloutError(ValueError):
    """A control action that does not apply in the rollout's current state."""


@dataclass(frozen=True, slots=True)
class Check:
    value: float | None
    limit: float
    ok: bool | None  # None: not enough data to judge yet

    def to_json(self) -> dict[str, Any]:
        v = None if self.value is None else round(self.value, 6)
        return {"value": v, "limit": self.limit, "ok": self.ok}


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of a rollout's state or step, as recorded in its history.

    `decided` says whether this process made the change (its controller decided, or an operator
    acted through it): True. A state adopted from the store, decided by another gateway or by
    an earlier run of this one (kind "remote"), is False: every process applies it (weights,
    labels), only the one that decided announces it (webhooks). Not part of `to_json`.
    """

    model: str
    kind: str  # step | promoted | rolled_back | paused | resumed | remote
    state: State
    step: int  # 1-based
    weight: float
    reason: str
    at: float
    decided: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "state": self.state, "step": self.step, "weight": self.weight,
                "reason": self.reason, "at": self.at}


class RolloutController:
    """One model's canary rollout. Synchronous and I/O-free; the caller persists `state_dict()`."""

    def __init__(self, model: str, cfg: Rollout, clock: Callable[[], float] = time.time, *,
                 stable_version: int | None = None, canary_version: int | None = None,
                 min_latency_s: float = 0.005) -> None:
        self.model = model
        self.cfg = cfg
        self.clock = clock
        self.stable_version = stable_version
        self.canary_version = canary_version
        # Below a few milliseconds, latency ratios measure scheduler and network noise, not the
        # model: a canary at 2.6 ms against a stable 2.0 ms is no regression (ratio 1.3 at a 1 ms
        # floor); latencies under this floor count as the floor.
        self.min_latency_s = min_latency_s
        self.early_sample = max(20, cfg.min_requests // 5)
        now = clock()
        self.state: State = "progressing"
        self.step = 0  # index into cfg.steps
        self.started_at = now
        self.step_started_at = now
        self.updated_at = now
        self.reason = f"started: {cfg.steps[0]:g}% to {cfg.canary}"
        self.rev = 0
        # A fresh controller has neither moved nor adopted a stored state: it adopts any stored
        # state of its identity, even one not newer than its own start (a restart at step 1).
        self.fresh = True
        self.decides = True  # False: observations only record; a fleet's leader decides
        self.history: list[dict[str, Any]] = []
        self.stats = RolloutStats()
        self.baseline: LatencyHistogram | None = None  # stable latency of the last step with data

    @property
    def identity(self) -> str:
        """Names this rollout: a persisted state of another rollout of the model is not ours."""
        c, s = self.cfg, self
        return (f"{c.stable}={s.stable_version}->{c.canary}={s.canary_version}"
                f";steps={','.join(f'{x:g}' for x in c.steps)}")

    @property
    def step_key(self) -> str:
        """Names the current step: statistics measured under another key belong to another
        step (or rollout) and are never pooled with this one's. A step restarts (new key) when
        it begins or resumes; a pause or a rollback keeps it."""
        return f"{self.identity}#{self.step + 1}@{self.step_started_at!r}"

    @contextmanager
    def judged_by(self, stats: RolloutStats | None) -> Iterator[None]:
        """Judge and report with `stats` (a fleet's pooled statistics of this step) for the
        duration; this process's own come back after, unless a move began a new step."""
        if stats is None:
            yield
            return
        own, self.stats = self.stats, stats
        try:
            yield
        finally:
            if self.stats is stats:
                self.stats = own

    # -- what the gateway applies -------------------------------------------------------------

    def canary_weight(self) -> float:
        """Percent of the model's traffic for the canary arm."""
        if self.state == "rolled_back":
            return 0.0
        if self.state == "promoted":
            return 100.0
        return float(self.cfg.steps[self.step])

    def weights(self) -> dict[str, float]:
        """The split override for the model's default route: {stable: 100 - w, canary: w}."""
        w = self.canary_weight()
        return {self.cfg.stable: 100.0 - w, self.cfg.canary: w}

    def promote_to(self) -> int | str | None:
        """After promotion: the version the stable label now names (or the canary arm itself
        when its version is not known, e.g. a pool arm). None before promotion."""
        if self.state != "promoted":
            return None
        if self.canary_version is not None:
            return self.canary_version
        if self.cfg.canary.startswith("version:"):
            return int(self.cfg.canary[8:])
        return self.cfg.canary

    def label_overrides(self) -> dict[str, int]:
        """Label -> version the gateway applies over the config's labels (empty if none)."""
        target = self.promote_to()
        if isinstance(target, int) and not self.cfg.stable.startswith(("version:", "pool:")):
            return {self.cfg.stable: target}
        return {}

    def role_of(self, arm: str) -> str | None:
        """"canary" / "stable" for the configured arm names, None for any other arm."""
        if arm == self.cfg.canary:
            return "canary"
        if arm == self.cfg.stable:
            return "stable"
        return None

    # -- observations -------------------------------------------------------------------------

    def observe(self, arm: str, ok: bool, latency_s: float) -> Transition | None:
        """Record one answered call of `arm` (a configured arm name); may roll back at once."""
        role = self.role_of(arm)
        if role is None:
            return None
        self.stats.observe(role, ok, latency_s)
        if role != "canary" or self.state not in ACTIVE or not self.decides:
            return None
        c = self.stats.canary
        if c.calls < self.early_sample:
            return None
        if not ok:
            if why := self._early_error():
                return self._roll_back(why, self.clock())
        elif c.calls % _LATENCY_EVERY == 0 and (why := self._early_latency()):
            return self._roll_back(why, self.clock())
        return None

    def observe_agreement(self, agreed: bool) -> Transition | None:
        """Record whether a mirrored call's canary answer agreed with the stable one."""
        self.stats.observe_agreement(agreed)
        if (agreed or self.state not in ACTIVE or not self.decides
                or self.stats.compared < min(self.early_sample, 20)):
            return None
        _, upper = wilson_interval(self.stats.agreed, self.stats.compared)
        if upper < self.cfg.min_agreement:
            s = self.stats
            why = (f"agreement {s.agreed}/{s.compared} = {s.agreed / s.compared:.3f} "
                   f"< {self.cfg.min_agreement} (95% upper bound {upper:.3f})")
            return self._roll_back(why, self.clock())
        return None

    def _early_error(self) -> str | None:
        c = self.stats.canary
        lower, _ = wilson_interval(c.errors, c.calls)
        if lower > self.cfg.max_error_rate:
            return (f"error_rate {c.errors}/{c.calls} = {c.errors / c.calls:.3f} > "
                    f"{self.cfg.max_error_rate} (95% lower bound {lower:.3f})")
        return None

    def _stable_p95(self) -> float | None:
        if self.stats.stable.latency.n >= self.early_sample:
            return self.stats.stable.p95()
        return self.baseline.quantile(0.95) if self.baseline is not None else None

    def _early_latency(self) -> str | None:
        ref, median = self._stable_p95(), self.stats.canary.p50()
        if ref is None or median is None:
            return None
        ratio = max(median, self.min_latency_s) / max(ref, self.min_latency_s)
        if ratio > self.cfg.max_p95_ratio:
            return (f"p95_ratio: canary median {median * 1000:.1f} ms is already "
                    f"{ratio:.2f}x the stable p95 {ref * 1000:.1f} ms (limit {self.cfg.max_p95_ratio})")
        return None

    # -- analysis -----------------------------------------------------------------------------

    def checks(self) -> dict[str, Check]:
        cfg, s = self.cfg, self.stats
        err = s.canary.error_rate
        ref, p95 = self._stable_p95(), s.canary.p95()
        ratio = (max(p95, self.min_latency_s) / max(ref, self.min_latency_s)
                 if ref is not None and p95 is not None else None)
        agree = s.agreement
        return {
            "error_rate": Check(err, cfg.max_error_rate,
                                None if err is None else err <= cfg.max_error_rate),
            "p95_ratio": Check(ratio, cfg.max_p95_ratio,
                               None if ratio is None else ratio <= cfg.max_p95_ratio),
            "agreement": Check(agree, cfg.min_agreement,
                               None if agree is None else agree >= cfg.min_agreement),
            "requests": Check(float(s.canary.calls), float(cfg.min_requests),
                              s.canary.calls >= cfg.min_requests),
        }

    def evaluate(self, now: float | None = None) -> Transition | None:
        """Advance, promote or roll back if the current step is decided; None otherwise."""
        now = self.clock() if now is None else now
        if self.state not in ACTIVE:
            return None
        if self.stats.canary.calls >= self.early_sample:
            why = self._early_error() or self._early_latency()
            if why:
                return self._roll_back(why, now)
        if self.state == "paused" or now - self.step_started_at < self.cfg.step_s:
            return None
        checks = self.checks()
        if not checks["requests"].ok:
            return None  # the step lasts until the canary has seen enough calls
        failed = [f"{k} {c.value:.4g} vs limit {c.limit:g}" for k, c in checks.items()
                  if c.ok is False and c.value is not None]
        if failed:
            return self._roll_back("; ".join(failed), now)
        passed = f"step {self.step + 1} passed ({self.stats.canary.calls} canary calls)"
        if self.step + 1 >= len(self.cfg.steps):
            return self._move("promoted", "promoted", self.step, f"{passed}; promoted", now)
        return self._move("step", "progressing", self.step + 1,
                          f"{passed}; {self.cfg.steps[self.step + 1]:g}% to {self.cfg.canary}", now)

    # -- control ------------------------------------------------------------------------------

    def pause(self, reason: str = "paused by operator") -> Transition:
        if self.state != "progressing":
            raise RolloutError(f"{self.model}: cannot pause a rollout that is {self.state}")
        return self._move("paused", "paused", self.step, reason, self.clock(), keep_stats=True)

    def resume(self, reason: str = "resumed by operator") -> Transition:
        """Continue a paused rollout (the current step starts over), or retry a rolled back one
        from the first step."""
        if self.state == "paused":
            return self._move("resumed", "progressing", self.step, reason, self.clock())
        if self.state == "rolled_back":
            return self._move("resumed", "progressing", 0, f"{reason}: retrying from step 1",
                              self.clock())
        raise RolloutError(f"{self.model}: cannot resume a rollout that is {self.state}")

    def promote(self, reason: str = "promoted by operator") -> Transition:
        if self.state == "promoted":
            raise RolloutError(f"{self.model}: already promoted")
        return self._move("promoted", "promoted", len(self.cfg.steps) - 1, reason, self.clock())

    def abort(self, reason: str = "aborted by operator") -> Transition:
        if self.state not in ACTIVE:
            raise RolloutError(f"{self.model}: cannot abort a rollout that is {self.state}")
        return self._roll_back(reason, self.clock())

    def _roll_back(self, reason: str, now: float) -> Transition:
        return self._move("rolled_back", "rolled_back", self.step, f"rolled back: {reason}", now,
                          keep_stats=True)

    def _move(self, kind: str, state: State, step: int, reason: str, now: float,
              keep_stats: bool = False) -> Transition:
        if not keep_stats:
            if self.stats.stable.latency.n >= self.early_sample:
                self.baseline = self.stats.stable.latency
            self.stats = RolloutStats()
            self.step_started_at = now
        self.state, self.step, self.reason = state, step, reason
        self.rev += 1
        self.updated_at = now
        self.fresh = False
        t = Transition(self.model, kind, state, step + 1, self.canary_weight(), reason, now)
        self.history = (self.history + [t.to_json()])[-_HISTORY:]
        return t

    # -- persistence --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What a store persists: enough for another process to continue at the same step."""
        return {"identity": self.identity, "state": self.state, "step": self.step + 1,
                "step_started_at": self.step_started_at, "started_at": self.started_at,
                "reason": self.reason, "rev": self.rev, "updated_at": self.updated_at,
                "history": list(self.history)}

    def merge_remote(self, d: dict[str, Any], force: bool = False) -> Transition | None:
        """Adopt `d` (a `state_dict()` from a store) if it is this rollout and strictly newer
        (or this controller is fresh, or `force`). Returns a "remote" transition when adopted."""
        try:
            if d.get("identity") != self.identity:
                return None
            rev, updated = int(d["rev"]), float(d["updated_at"])
            if not force and not self.fresh and (rev, updated) <= (self.rev, self.updated_at):
                return None
            state, step = str(d["state"]), int(d["step"]) - 1
            if state not in ("progressing", "paused", "promoted", "rolled_back"):
                return None
            if not 0 <= step < len(self.cfg.steps):
                return None
            step_started = float(d["step_started_at"])
        except (KeyError, TypeError, ValueError):
            return None
        if (step, step_started) != (self.step, self.step_started_at):
            self.stats = RolloutStats()  # another step; a pause or a rollback keeps this one
        self.state = state  # type: ignore[assignment]  # checked against the four states above
        self.step, self.step_started_at = step, step_started
        self.started_at = float(d.get("started_at", self.started_at))
        self.reason = str(d.get("reason", ""))
        self.rev, self.updated_at = rev, updated
        self.fresh = False
        hist = d.get("history")
        if isinstance(hist, list):
            self.history = [h for h in hist if isinstance(h, dict)][-_HISTORY:]
        return Transition(self.model, "remote", self.state, self.step + 1, self.canary_weight(),
                          self.reason, updated, decided=False)

    # -- reporting ----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The per-model answer of GET /api/rollouts (DESIGN.md), with extras."""
        s = self.stats
        return {
            "state": self.state, "step": self.step + 1, "weight": self.canary_weight(),
            "reason": self.reason,
            "checks": {k: c.to_json() for k, c in self.checks().items()},
            "steps": list(self.cfg.steps), "step_s": self.cfg.step_s,
            "step_elapsed_s": round(max(0.0, self.clock() - self.step_started_at), 3),
            "canary": self.cfg.canary, "stable": self.cfg.stable,
            "canary_version": self.canary_version, "stable_version": self.stable_version,
            "promote_to": self.promote_to(),
            "started_at": self.started_at, "step_started_at": self.step_started_at,
            "updated_at": self.updated_at, "rev": self.rev,
            "calls": {"canary": s.canary.calls, "stable": s.stable.calls,
                      "canary_errors": s.canary.errors, "stable_errors": s.stable.errors,
                      "compared": s.compared, "agreed": s.agreed},
            "history": list(self.history),
        }
