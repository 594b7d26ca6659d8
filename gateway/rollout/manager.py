"""Every model's canary rollout in one gateway: built from config, fed by the request path,
evaluated on a timer, persisted, and driven from the admin API.

The gateway holds one `RolloutManager`. The request path calls `observe` (and
`observe_agreement` for mirrored calls); both are synchronous and O(1). A transition (a step,
a promotion, a rollback, an operator action, or a newer state adopted from the store) is handed
to `on_change` at once, so the gateway can rebuild the model's routing with `weights(model)` and
`label_overrides(model)`; it is persisted by the next `tick` (or at once, for admin actions).

What must always hold:
- the request path never awaits and never touches the store;
- a reload keeps a rollout whose identity (stable and canary names and versions, steps) is
  unchanged, with its state and step; any other change starts a new rollout;
- a model whose stable and canary name the same version has no rollout (nothing to compare).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway.config import ModelConfig
from gateway.core.metrics import Metrics
from gateway.rollout.controller import RolloutController, RolloutError, Transition
from gateway.rollout.store import RolloutStore

log = logging.getLogger("infergate.rollout")

ACTIONS = ("pause", "resume", "promote", "abort")


def _version_of(target: str, labels: Mapping[str, int]) -> int | None:
    if target.startswith("version:"):
        return int(target[8:])
    if target.startswith("pool:"):
        return None
    return labels.get(target)


class RolloutManager:
    def __init__(self, store: RolloutStore | None = None, clock: Callable[[], float] = time.time,
                 on_change: Callable[[Transition], None] | None = None,
                 metrics: Metrics | None = None, poll_s: float = 2.0) -> None:
        self.store = store
        self.clock = clock
        self.on_change = on_change
        self.metrics = metrics
        self.poll_s = poll_s
        self._controllers: dict[str, RolloutController] = {}
        self._dirty: set[str] = set()
        self._last_poll = float("-inf")

    # -- building -----------------------------------------------------------------------------

    def configure(self, models: Mapping[str, ModelConfig]) -> None:
        """Build controllers for the models whose config has a rollout; keep unchanged ones."""
        new: dict[str, RolloutController] = {}
        for name, m in models.items():
            if m.rollout is None:
                continue
            sv = _version_of(m.rollout.stable, m.labels)
            cv = _version_of(m.rollout.canary, m.labels)
            if sv is not None and sv == cv:
                continue
            ctl = RolloutController(name, m.rollout, self.clock, stable_version=sv, canary_version=cv)
            old = self._controllers.get(name)
            if old is not None and old.identity == ctl.identity:
                if old.cfg == ctl.cfg:
                    ctl = old
                else:  # same rollout, other limits or timings: carry its state over
                    ctl.merge_remote(old.state_dict(), force=True)
                    ctl.stats = old.stats
            new[name] = ctl
        if self.metrics is not None:
            for gone in set(self._controllers) - set(new):
                self.metrics.rollout_weight.remove(gone)
        self._controllers = new
        self._dirty &= set(new)
        for name, ctl in new.items():
            self._set_gauge(name, ctl)

    def get(self, model: str) -> RolloutController | None:
        return self._controllers.get(model)

    def models(self) -> list[str]:
        return sorted(self._controllers)

    # -- the request path ---------------------------------------------------------------------

    def observe(self, model: str, arm: str, ok: bool, latency_s: float) -> None:
        """One answered call of `model` routed to split arm `arm` (a label, version:N or pool:X)."""
        ctl = self._controllers.get(model)
        if ctl is not None:
            self._changed(ctl.observe(arm, ok, latency_s))

    def observe_agreement(self, model: str, agreed: bool) -> None:
        ctl = self._controllers.get(model)
        if ctl is not None:
            self._changed(ctl.observe_agreement(agreed))

    def weights(self, model: str) -> dict[str, float] | None:
        """Split override for the model's default route, or None when it has no rollout."""
        ctl = self._controllers.get(model)
        return ctl.weights() if ctl is not None else None

    def label_overrides(self, model: str) -> dict[str, int]:
        ctl = self._controllers.get(model)
        return ctl.label_overrides() if ctl is not None else {}

    # -- admin --------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The body of GET /api/rollouts."""
        return {"rollouts": {m: c.to_json() for m, c in sorted(self._controllers.items())}}

    async def act(self, model: str, action: str, reason: str | None = None) -> dict[str, Any]:
        """Apply an operator action and persist it before answering.

        Raises KeyError when the model has no rollout, RolloutError when the action does not
        apply (unknown action, or not in this state).
        """
        ctl = self._controllers.get(model)
        if ctl is None:
            raise KeyError(model)
        if action not in ACTIONS:
            raise RolloutError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
        method: Callable[..., Transition] = getattr(ctl, action)
        t = method(reason) if reason else method()
        self._changed(t)
        await self._save(model)
        return ctl.to_json()

    # -- the timer ----------------------------------------------------------------------------

    async def restore(self) -> None:
        """At startup: continue every rollout from the store, or record its start there."""
        if self.store is None:
            return
        for name, ctl in list(self._controllers.items()):
            d = await self.store.load(name)
            if d is not None and (t := ctl.merge_remote(d)) is not None:
                log.info("%s: rollout continues from the store: %s, step %d", name, t.state, t.step)
                self._changed(t)
            else:
                self._dirty.add(name)
        await self._save_dirty()
        self._last_poll = self.clock()

    async def tick(self, now: float | None = None) -> list[Transition]:
        """Evaluate every rollout, persist what changed, adopt newer states from the store."""
        now = self.clock() if now is None else now
        out: list[Transition] = []
        for ctl in list(self._controllers.values()):
            t = ctl.evaluate(now)
            if t is not None:
                out.append(t)
                self._changed(t)
        await self._save_dirty()
        if self.store is not None and now - self._last_poll >= self.poll_s:
            self._last_poll = now
            for name, ctl in list(self._controllers.items()):
                d = await self.store.load(name)
                if d is not None and self._controllers.get(name) is ctl:
                    t = ctl.merge_remote(d)
                    if t is not None:
                        out.append(t)
                        self._changed(t, persist=False)
        return out

    async def run(self, interval_s: float = 1.0) -> None:
        """Tick forever (start it with gateway.core.tasks.spawn)."""
        while True:
            await self.tick()
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        await self._save_dirty()
        if self.store is not None:
            await self.store.close()

    # -- internals ----------------------------------------------------------------------------

    def _changed(self, t: Transition | None, persist: bool = True) -> None:
        if t is None:
            return
        if t.kind != "remote":
            log.info("%s: rollout %s: %s (step %d, canary %g%%)", t.model, t.kind, t.reason,
                     t.step, t.weight)
        if persist:
            self._dirty.add(t.model)
        ctl = self._controllers.get(t.model)
        if ctl is not None:
            self._set_gauge(t.model, ctl)
        if self.on_change is not None:
            self.on_change(t)

    def _set_gauge(self, model: str, ctl: RolloutController) -> None:
        if self.metrics is not None:
            self.metrics.rollout_weight.labels(model).set(ctl.canary_weight())

    async def _save(self, model: str) -> None:
        ctl = self._controllers.get(model)
        self._dirty.discard(model)
        if self.store is not None and ctl is not None:
            if not await self.store.save(model, ctl.state_dict()):
                self._dirty.add(model)  # the store logged why; the next tick tries again

    async def _save_dirty(self) -> None:
        for model in sorted(self._dirty):
            await self._save(model)
