"""Every model's canary rollout in one gateway: built from config, fed by the request path,
evaluated on a timer, persisted, and driven from the admin API.

The gateway holds one `RolloutManager`. The request path calls `observe` (and
`observe_agreement` for mirrored calls); both are synchronous and O(1). A transition (a step,
a promotion, a rollback, an operator action, or a newer state adopted from the store) is handed
to `on_change` at once, so the gateway can rebuild the model's routing with `weights(model)` and
`label_overrides(model)`; it is persisted by the next `tick` (or at once, for admin actions).

Given a shared store (`shared`: gateways on one Redis, or the workers of one `--workers N`), the
manager runs one analysis for the fleet (gateway/rollout/fleet.py): every tick it adopts the
stored state, publishes its statistics and pools everyone's; only the holder of the "rollout"
lease judges the pooled statistics and stores its decisions, and an operator's action on any
process is stored before it is answered. Every process applies every change (`on_change`
fires everywhere); `Transition.decided` is True only in the process that decided, the one that
should announce it (webhooks).

What must always hold:
- the request path never awaits and never touches the store;
- a reload keeps a rollout whose identity (stable and canary names and versions, steps) is
  unchanged, with its state and step; any other change starts a new rollout;
- a model whose stable and canary name the same version has no rollout (nothing to compare);
- in a fleet, a process that does not hold the lease never decides (its controllers only
  record), and a decision reaches `on_change` as decided only once the store took it: of two
  processes that moved the same rev, the one whose save was refused adopts the other's state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway.config import ModelConfig
from gateway.core.metrics import Metrics
from gateway.core.shared import SharedStore
from gateway.rollout.controller import RolloutController, RolloutError, Transition
from gateway.rollout.fleet import Fleet, SharedRolloutStore
from gateway.rollout.stats import RolloutStats
from gateway.rollout.store import RolloutStore, superseded

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
                 metrics: Metrics | None = None, poll_s: float = 2.0, *,
                 shared: SharedStore | None = None, interval_s: float = 1.0) -> None:
        """`shared`: the store this process shares with its peers; None, it decides alone.
        `interval_s`: the tick interval (`run` sets it too); the lease lasts three of them.
        A fleet given no `store` keeps its states in the shared store's documents."""
        if store is None and shared is not None:
            store = SharedRolloutStore(shared)
        self.store = store
        self.clock = clock
        self.on_change = on_change
        self.metrics = metrics
        self.poll_s = poll_s
        self.fleet = Fleet(shared, interval_s) if shared is not None else None
        self._controllers: dict[str, RolloutController] = {}
        self._dirty: set[str] = set()
        self._last_poll = float("-inf")
        self._deciding = asyncio.Lock()  # in a fleet: one tick or one action at a time

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
            ctl.decides = self.fleet is None or self.fleet.role == "alone"
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
        """The body of GET /api/rollouts: in a fleet, its checks and calls are the pooled ones,
        and "fleet" says how many processes are live and which role this one has."""
        return {"rollouts": {m: self._model_json(c) for m, c in sorted(self._controllers.items())}}

    def _model_json(self, ctl: RolloutController) -> dict[str, Any]:
        fleet = self.fleet
        with ctl.judged_by(fleet.pooled(ctl) if fleet is not None else None):
            out = ctl.to_json()
        out["fleet"] = fleet.to_json() if fleet is not None else {"instances": 1, "role": "alone"}
        return out

    async def act(self, model: str, action: str, reason: str | None = None) -> dict[str, Any]:
        """Apply an operator action and persist it before answering.

        Raises KeyError when the model has no rollout, RolloutError when the action does not
        apply (unknown action, or not in this state). In a fleet the action applies to the
        stored state and once: if another process stored a move first, the action is tried
        again on that state (and may no longer apply).
        """
        ctl = self._controllers.get(model)
        if ctl is None:
            raise KeyError(model)
        if action not in ACTIONS:
            raise RolloutError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
        method: Callable[..., Transition] = getattr(ctl, action)
        if self.fleet is None:
            self._changed(method(reason) if reason else method())
            await self._save(model)
            return self._model_json(ctl)
        async with self._deciding:
            await self._adopt(model)
            for _ in range(3):
                own, key = ctl.stats, ctl.step_key
                t = method(reason) if reason else method()
                if (await self._commit(ctl, t, own, key)).decided:
                    break
        return self._model_json(ctl)

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
        if self.fleet is not None:
            self._set_role(await self.fleet.sync(self._controllers))

    async def tick(self, now: float | None = None) -> list[Transition]:
        """Evaluate every rollout, persist what changed, adopt newer states from the store.

        In a fleet: adopt the stored states, publish and pool, then decide on the pooled
        statistics if this process holds the lease (or alone, when the shared store is down)."""
        now = self.clock() if now is None else now
        if self.fleet is not None:
            async with self._deciding:
                return await self._tick_fleet(self.fleet, now)
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

    async def _tick_fleet(self, fleet: Fleet, now: float) -> list[Transition]:
        out = [t for name in list(self._controllers) if (t := await self._adopt(name)) is not None]
        role = await fleet.sync(self._controllers)
        self._set_role(role)
        if role != "follower":
            for ctl in list(self._controllers.values()):
                own, key = ctl.stats, ctl.step_key
                with ctl.judged_by(fleet.pooled(ctl)):
                    t = ctl.evaluate(now)
                if t is not None:
                    out.append(await self._commit(ctl, t, own, key))
        await self._save_dirty()
        return out

    async def run(self, interval_s: float = 1.0) -> None:
        """Tick forever (start it with gateway.core.tasks.spawn)."""
        if self.fleet is not None:
            self.fleet.interval_s = interval_s
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

    def _set_role(self, role: str) -> None:
        for ctl in self._controllers.values():
            ctl.decides = role == "alone"

    async def _adopt(self, model: str) -> Transition | None:
        """Follow the stored state of `model` if it is newer than ours."""
        ctl = self._controllers.get(model)
        if self.store is None or ctl is None:
            return None
        d = await self.store.load(model)
        if d is None or self._controllers.get(model) is not ctl:
            return None
        key, before = ctl.step_key, self.fleet.pooled(ctl) if self.fleet is not None else None
        t = ctl.merge_remote(d)
        if t is not None:
            if self.fleet is not None and ctl.step_key != key:
                self.fleet.follow_baseline(ctl, before)
            self._changed(t, persist=False)
        return t

    async def _commit(self, ctl: RolloutController, t: Transition, own: RolloutStats,
                      key: str) -> Transition:
        """Store a move this process made (`own`, `key`: its statistics and step before), then
        announce it. A move that lost to one another process stored first is dropped for that
        one, which is announced (as not decided here) and returned instead."""
        if self.store is None or await self.store.save(ctl.model, ctl.state_dict()):
            self._changed(t, persist=False)
            return t
        won = await self._lost(ctl, own, key)
        if won is None:
            self._changed(t)  # the store is unreachable: ours stands, saved by a later tick
            return t
        return won

    async def _lost(self, ctl: RolloutController, own: RolloutStats,
                    key: str) -> Transition | None:
        """After a refused save: adopt the stored state that superseded ours, if one did."""
        d = await self.store.load(ctl.model) if self.store is not None else None
        if d is None or not superseded(d, ctl.state_dict()):
            return None
        t = ctl.merge_remote(d, force=True)
        if t is None:
            return None
        if ctl.step_key == key:
            ctl.stats = own  # back at the step we measured: keep what we measured
        log.info("%s: another gateway moved the rollout first: %s, step %d", ctl.model,
                 t.state, t.step)
        self._changed(t, persist=False)
        return t

    async def _save(self, model: str) -> None:
        ctl = self._controllers.get(model)
        self._dirty.discard(model)
        if self.store is not None and ctl is not None:
            if (not await self.store.save(model, ctl.state_dict())
                    and await self._lost(ctl, ctl.stats, ctl.step_key) is None):
                self._dirty.add(model)  # the store logged why; the next tick tries again

    async def _save_dirty(self) -> None:
        for model in sorted(self._dirty):
            await self._save(model)
