"""Feeds the gateway's `CostLedger` (gateway.scaling.cost) from its hooks and publishes it:
`GET /api/cost` and the gauges infergate_cost_per_1k_predictions / infergate_cost_last_hour,
refreshed every `PUBLISH_S`.

The feed: every upstream answer (replica busy seconds), every call a replica answered (by model;
cache hits cost no replica time and are left out) and, for models with `api_keys`, which key the
call carried, as a bounded label: `key-` and the first 8 hex digits of the key's SHA-256, taken
only from the model's configured keys (a key that matches none gives no label, so a client
cannot make up label values, and no key ever appears as itself).

Several gateways on one shared store (Redis, or the workers' folder) count one fleet: every
`PUBLISH_S` each publishes the calls it sent each replica per bucket and reads the others'
(kept for the whole window, so a gateway that has stopped still accounts for the calls it sent),
and its report shares each replica's cost among every gateway's calls. Each gateway's model
figures are then its own calls' share: infergate_cost_last_hour adds up across gateways, and
infergate_cost_per_1k_predictions is the fleet's on every one of them. The ledger runs on the
wall clock (`clock`, time.time) so that its buckets line up with the other gateways'.

What must always hold: the per-call work is a few dict updates (a SHA-256 only for models with
keys); a reload or a discovery swap re-prices the fleet from the moment it applies; gauges of a
(pool, model) that left the window are removed, not left at their last value; a shared store
that cannot be reached leaves the last peers' counts in place.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any

from gateway.config import GatewayConfig
from gateway.core.call import Answer, Call, api_key_of
from gateway.core.metrics import Metrics
from gateway.core.shared import Doc, SharedStore
from gateway.core.tasks import spawn
from gateway.fleet.replicas import ReplicaState
from gateway.scaling.cost import CostLedger, CostReport, PeerCounts, prices

PUBLISH_S = 5.0
TOPIC = "cost"

KeyLabels = tuple[tuple[bytes, str], ...]  # (SHA-256 digest of a configured key, its label)


def key_labels(cfg: GatewayConfig) -> dict[str, KeyLabels]:
    """Per model with api_keys: each configured key's digest and label."""
    out: dict[str, KeyLabels] = {}
    for name, m in cfg.models.items():
        digests = [bytes.fromhex(k[7:]) if k.startswith("sha256:")
                   else hashlib.sha256(k.encode()).digest() for k in m.api_keys]
        if digests:
            out[name] = tuple((d, "key-" + d.hex()[:8]) for d in digests)
    return out


def key_label(headers: Mapping[str, str], keys: KeyLabels) -> str | None:
    """The label of the configured key a call carries (x-api-key or Authorization: Bearer, as
    the router reads it), else None."""
    given = api_key_of(headers)
    if given is None:
        return None
    digest = hashlib.sha256(given.encode()).digest()
    for d, label in keys:
        if hmac.compare_digest(digest, d):
            return label
    return None


def peer_counts(doc: Doc, bucket_s: float) -> PeerCounts | None:
    """A peer's published counts, or None for a document this ledger cannot use (another
    bucket size, or malformed)."""
    if doc.get("bucket_s") != bucket_s or not isinstance(doc.get("served"), dict):
        return None
    out: dict[int, dict[str, int]] = {}
    try:
        for idx, counts in doc["served"].items():
            out[int(idx)] = {str(r): int(n) for r, n in counts.items() if int(n) > 0}
    except (TypeError, ValueError, AttributeError):
        return None
    return out


class CostFeed:
    def __init__(self, config: Callable[[], GatewayConfig], metrics: Metrics,
                 clock: Callable[[], float] = time.time, shared: SharedStore | None = None
                 ) -> None:
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._shared = shared
        self.ledger = CostLedger()
        self._peers: list[PeerCounts] = []
        self._busy: dict[str, float] = {}  # upstream seconds per replica since the last fold
        self._keys: dict[str, KeyLabels] = {}
        self._published: set[tuple[str, ...]] = set()
        self.configure()

    def configure(self) -> None:
        """The current config's replicas and prices (after a reload or a discovery swap)."""
        cfg = self._config()
        self.ledger.configure(prices(cfg), self._clock())
        self._keys = key_labels(cfg)

    def upstream(self, replica: ReplicaState, seconds: float) -> None:
        """Per upstream answer: added up here, given to the ledger when figures are read (every
        `PUBLISH_S`; busy seconds are a pool-level figure, a few seconds late is fine)."""
        busy, name = self._busy, replica.name
        busy[name] = busy.get(name, 0.0) + seconds

    def answered(self, model: str, answer: Answer | None, call: Call | None = None) -> None:
        """`model` is the bounded model label; only calls a replica answered count, at the
        ledger's own (shared, wall) clock. With `call`, who it was for is counted too
        (`keyed`)."""
        if model and answer is not None and answer.replica and answer.cache != "hit":
            self.ledger.served(answer.replica, model, self._clock())
            if call is not None and (call.tenant or model in self._keys):
                self.keyed(call, answer)

    def _fold(self, now: float) -> None:
        busy, self._busy = self._busy, {}
        for name, seconds in busy.items():
            self.ledger.busy(name, seconds, now)

    def keyed(self, call: Call, answer: Answer) -> Answer:
        """Counts who a call was for: its tenant (`tenants:`), else the label of its key
        for a model with api_keys; returns `answer`."""
        model = call.model
        if (call.tenant and not call.tenant.endswith(".api_key") and model and answer.replica
                and answer.cache != "hit"):
            self.ledger.keyed(answer.replica, model, call.tenant, self._clock())
            return answer
        keys = self._keys.get(model) if model else None
        if keys is not None and model and answer.replica and answer.cache != "hit":
            label = key_label(call.headers, keys)
            if label is not None:
                self.ledger.keyed(answer.replica, model, label, self._clock())
        return answer

    def report(self) -> CostReport:
        now = self._clock()
        self._fold(now)
        return self.ledger.report(now, self._peers)

    async def share(self) -> None:
        """Publish this gateway's calls per replica and bucket; read every other gateway's."""
        shared = self._shared
        if shared is None:
            return
        ledger = self.ledger
        served = ledger.served_counts(self._clock())
        await shared.publish(TOPIC, {"bucket_s": ledger.bucket_s,
                                     "served": {str(i): c for i, c in served.items()}})
        docs = await shared.collect(TOPIC, ledger.window_s)
        if docs is None:
            return  # unreachable: the last peers' counts stay
        peers = (peer_counts(d, ledger.bucket_s) for k, d in docs.items() if k != shared.instance)
        self._peers = [p for p in peers if p is not None]

    def to_json(self) -> dict[str, Any]:
        return self.report().to_json()

    def publish(self) -> None:
        rep = self.report()
        mx = self._metrics
        seen: set[tuple[str, ...]] = set()
        for model, m in rep.models.items():
            mx.cost_last_hour.labels(model).set(m.cost)
            seen.add((model,))
            for pool, s in m.by_pool.items():
                if s.cost_per_1k is not None:
                    mx.cost_per_1k.labels(pool, model).set(s.cost_per_1k)
                    seen.add((pool, model))
        for labels in self._published - seen:
            gauge = mx.cost_last_hour if len(labels) == 1 else mx.cost_per_1k
            gauge.remove(*labels)
        self._published = seen

    def start(self) -> asyncio.Task[None]:
        return spawn(self._publish_every(PUBLISH_S), "cost-metrics")

    async def _publish_every(self, period_s: float) -> None:
        while True:
            await self.share()
            self.publish()
            await asyncio.sleep(period_s)
