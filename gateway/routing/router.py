"""Per-model routing built once from config: labels, rule chain, splits, sticky and balance.

`ModelRouter` is immutable and rebuilt on every reload. At request time it answers two
questions, both without I/O: which (version, pool) should serve this call, and in what order
should the eligible replicas be tried. Policies come from the `policies` registry by name.

What must always hold:
- an explicit version in the request is always honoured;
- a label named in the config resolves here; a label the config does not name is passed through;
- a split arm with no eligible replica (a canary not loaded yet) is skipped, never an error,
  as long as another arm or the latest version can serve.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.config import HeaderMatch as HeaderMatchCfg
from gateway.config import ModelConfig, Route
from gateway.core.call import api_key_of
from policies.base import Balancer, PickContext, ReplicaView
from policies.match import HeaderMatch, RouteMatch, RuleChain
from policies.registry import make_balancer
from policies.split import WeightedSplit
from policies.sticky import StickyPolicy, StickyTableCache


@dataclass(frozen=True, slots=True)
class Target:
    """What a split arm names: a version (None = latest) and optionally a pool."""

    version: int | None = None
    pool: str | None = None
    arm: str = "latest"


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    split: WeightedSplit[str]
    bucket_by_lower: str | None
    orders: dict[str, tuple[Target, ...]]  # picked arm -> targets in order of preference


_LATEST = (Target(),)


def _header_match(name: str, spec: str | HeaderMatchCfg) -> HeaderMatch:
    if isinstance(spec, str):
        return HeaderMatch(name.lower(), exact=spec)
    return HeaderMatch(name.lower(), exact=spec.exact, regex=spec.regex, present=spec.present)


class ModelRouter:
    """Routing for one model, compiled from its config."""

    def __init__(self, name: str, cfg: ModelConfig, default_balance: str = "round_robin",
                 weight_override: Mapping[str, float] | None = None,
                 label_override: Mapping[str, int] | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.labels: dict[str, int] = {**cfg.labels, **(label_override or {})}
        rules: list[tuple[RouteMatch, CompiledRoute]] = []
        routes = list(cfg.routes)
        if weight_override and not any(r.match is None for r in routes):
            # A rollout on a model with no catch-all route: the rollout's weights are the route.
            routes.append(Route(split=dict(weight_override)))
        for route in routes:
            split = dict(route.split)
            if weight_override and route.match is None:
                split = {**split, **weight_override}
            arms = tuple(split)
            weighted = [(a, w) for a, w in split.items()]
            if sum(w for _a, w in weighted) <= 0:
                continue
            m = route.match
            match = RouteMatch(
                headers=tuple(_header_match(k, v) for k, v in (m.headers.items() if m else ())),
                methods=frozenset(m.methods) if m and m.methods else None,
                protocols=frozenset(m.protocols) if m and m.protocols else None,
            )
            orders = {first: tuple(self.target_of(a) for a in (first, *[b for b in arms if b != first]))
                      + _LATEST for first in arms}
            rules.append((match, CompiledRoute(WeightedSplit(weighted, salt=name),
                                               route.bucket_by.lower() if route.bucket_by else None,
                                               orders)))
        self.chain: RuleChain[CompiledRoute] = RuleChain(rules)
        balance = cfg.balance if "balance" in cfg.model_fields_set else default_balance
        self.balancer: Balancer = make_balancer(balance)
        self.key_digests: tuple[bytes, ...] = tuple(
            bytes.fromhex(k[7:]) if k.startswith("sha256:") else hashlib.sha256(k.encode()).digest()
            for k in cfg.api_keys)
        self.sticky_header = cfg.sticky.header.lower() if cfg.sticky and cfg.sticky.header else None
        self.sticky_cookie = cfg.sticky.cookie if cfg.sticky else None
        self.sticky: Balancer | None = (
            StickyPolicy(self.balancer, StickyTableCache(c=cfg.sticky.load_factor)) if cfg.sticky
            else None
        )

    def target_of(self, arm: str) -> Target:
        if arm.startswith("version:"):
            return Target(version=int(arm[8:]), arm=arm)
        if arm.startswith("pool:"):
            return Target(pool=arm[5:], arm=arm)
        return Target(version=self.labels.get(arm), arm=arm)

    def choose_targets(self, headers: Mapping[str, str], method: str, protocol: str,
                       rng: random.Random) -> tuple[Target, ...]:
        """Targets in order of preference for a call that named no version or label: the picked
        arm, the route's other arms, then the latest version (precomputed per picked arm)."""
        route = self.chain.select(headers, method, protocol)
        if route is None:
            return _LATEST
        key = headers.get(route.bucket_by_lower) if route.bucket_by_lower else None
        return route.orders[route.split.pick(key, rng)]

    def authorized(self, headers: Mapping[str, str]) -> bool:
        """True when the model needs no key or the call carries one of its keys (x-api-key or
        Authorization: Bearer). Compared as SHA-256 digests in constant time; never logged."""
        if not self.key_digests:
            return True
        given = api_key_of(headers)
        if given is None:
            return False
        digest = hashlib.sha256(given.encode()).digest()
        ok = False
        for k in self.key_digests:  # no early exit: time does not tell which key matched
            ok |= hmac.compare_digest(digest, k)
        return ok

    def session_key(self, headers: Mapping[str, str]) -> str | None:
        if self.sticky_header is not None:
            v = headers.get(self.sticky_header)
            if v:
                return v
        if self.sticky_cookie is not None:
            return _cookie(headers.get("cookie", ""), self.sticky_cookie)
        return None

    def rank(self, candidates: Sequence[ReplicaView], ctx: PickContext) -> list[ReplicaView]:
        if self.sticky is not None and ctx.key is not None:
            return self.sticky.rank(candidates, ctx)
        return self.balancer.rank(candidates, ctx)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep and k == name:
            return v or None
    return None


def default_router(name: str, balance: str) -> ModelRouter:
    """The router of a model the config does not list (discovered on first use)."""
    return ModelRouter(name, ModelConfig(balance=balance), balance)
