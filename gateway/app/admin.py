"""The admin listener (127.0.0.1:9901 by default): Prometheus metrics, health, readiness, the
JSON API and the dashboard.

What must always hold: every /api answer is JSON; nothing here blocks the event loop; the admin
surface never proxies traffic to an address that is not a configured replica.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.resources
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.app.fleet_metrics import merge_expositions
from gateway.fleet.replicas import ReplicaState
from gateway.rollout.controller import RolloutError

if TYPE_CHECKING:
    from gateway.app.gateway import Gateway

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), status=status,
                        content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    body = generate_latest(gw.metrics.registry)
    if gw.workers_store is not None:  # --workers N: every worker's series, merged
        peers = await gw.workers_store.collect("metrics", 5.0) or {}
        texts = [str(d.get("text", "")) for k, d in peers.items()
                 if k != gw.workers_store.instance]
        body = merge_expositions([body.decode(), *texts])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    if gw.ready():
        return web.Response(text="ready\n")
    why = "draining" if gw.draining else "no replica can serve yet"
    return web.Response(text=f"not ready: {why}\n", status=503)


async def config(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return _json({"path": str(gw.config_path) if gw.config_path else None,
                  "config": gw.runtime.cfg.model_dump(mode="json"),
                  "last_reload": gw.last_reload})


async def reload(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    ok, err = await gw.reload()
    return _json({"ok": ok, "error": err}, 200 if ok else 400)


def replica_json(gw: Gateway) -> list[dict[str, Any]]:
    now = time.monotonic()
    out = []
    for r in gw.runtime.replicas.all:
        out.append({
            "name": r.name, "pool": r.pool, "rest": r.cfg.rest, "grpc": r.cfg.grpc,
            "healthy": r.healthy, "routable": r.routable(now), "draining": r.draining,
            "state": _state(r, now),
            "ejected_for_s": max(0.0, r.ejected_until - now), "in_flight": r.in_flight,
            "latency_ms": round(r.latency_s(now) * 1000, 3), "gpu_util": r.gpu_util,
            "gpu_mem_frac": r.gpu_mem_frac, "cpu_util": r.cpu_util, "requests": r.requests,
            "errors": r.errors, "weight": r.weight, "capacity_rps": r.cfg.capacity_rps,
            "models": {m: {str(v): s for v, s in vs.items()} for m, vs in r.versions.items()},
        })
    return out


def _state(r: ReplicaState, now: float) -> str:
    if r.draining:
        return "draining"
    if not r.healthy:
        return "down"
    if now < r.ejected_until:
        return "ejected"
    return "up"


async def replicas(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return _json({"replicas": replica_json(gw), "discovery": gw.discovery.status()})


async def drain(request: web.Request) -> web.Response:
    """POST /api/replicas/{name}/drain | /undrain: no new calls to that replica (in-flight
    calls finish), or back into rotation; shared by every gateway on the same Redis."""
    gw = request.app[GATEWAY]
    name, action = request.match_info["name"], request.match_info["action"]
    r = gw.runtime.replicas.by_name.get(name)
    if r is None:
        return _json({"error": f"no replica named {name!r}"}, 404)
    if action == "drain":
        await gw.drains.drain(name)
    else:
        await gw.drains.undrain(name)
    return _json({"replica": name, "state": _state(r, time.monotonic()),
                  "draining": r.draining, "in_flight": r.in_flight,
                  "shared": gw.drains.shared})


async def models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    reps = gw.runtime.replicas
    out: dict[str, Any] = {}
    for name in sorted(reps.models() | set(gw.runtime.cfg.models)):
        m = gw.runtime.cfg.models.get(name)
        out[name] = {
            "latest": reps.latest(name),
            "versions": sorted(reps.versions_seen(name)),
            "labels": dict(m.labels) if m else {},
            "routes": [r.model_dump(mode="json") for r in m.routes] if m else [],
            "balance": m.balance if m else gw.runtime.cfg.default_balance,
            "configured": m is not None,
        }
    return _json({"models": out})


async def scale(request: web.Request) -> web.Response:
    return _json(request.app[GATEWAY].scale.to_json())


async def traffic(request: web.Request) -> web.Response:
    return _json(request.app[GATEWAY].traffic.to_json())


async def cost(request: web.Request) -> web.Response:
    """What the fleet cost over the last hour, per pool, and which models' calls it went to."""
    return _json(request.app[GATEWAY].cost.to_json())


async def tenants(request: web.Request) -> web.Response:
    """Usage per tenant: calls, errors, 429s, queueing and replica time (names, never keys)."""
    return _json(request.app[GATEWAY].tenants.to_json())


async def cache(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    out: dict[str, Any] = {}
    for name, c in gw.caches.items():
        st = c.stats()
        hits = sum(v for k, v in st.items() if k.startswith("hits"))
        misses = st.get("misses", 0)
        total = hits + misses
        out[name] = {"hits": hits, "misses": misses,
                     "hit_rate": round(hits / total, 4) if total else None, "stats": st}
    return _json({"store": gw.runtime.cfg.cache.store, "models": out})


# Reachable without the bearer token: orchestrator probes and Prometheus scrapes.
# The dashboard page itself holds no data: it asks for the token and sends it with its API calls.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/"})


def _token_guard(token: str) -> Any:
    expected = hashlib.sha256(token.encode()).digest()

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            got = request.headers.get("Authorization", "")
            scheme, _, value = got.partition(" ")
            digest = hashlib.sha256(value.strip().encode()).digest()
            if scheme.lower() != "bearer" or not hmac.compare_digest(digest, expected):
                return _json({"error": "admin API needs a valid bearer token"}, 401)
        resp: web.StreamResponse = await handler(request)
        return resp

    return guard


async def rollouts(request: web.Request) -> web.Response:
    return _json(request.app[GATEWAY].rollouts.to_json())


async def rollout_action(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    model, action = request.match_info["model"], request.match_info["action"]
    reason = None
    if request.can_read_body:
        try:
            body = await request.json()
            reason = body.get("reason") if isinstance(body, dict) else None
        except ValueError:
            return _json({"error": "body must be JSON"}, 400)
    try:
        return _json(await gw.rollouts.act(model, action, reason))
    except KeyError:
        return _json({"error": f"model {model!r} has no rollout"}, 404)
    except RolloutError as exc:
        return _json({"error": str(exc)}, 409)


async def dashboard(request: web.Request) -> web.Response:
    page = importlib.resources.files("gateway.app").joinpath("dashboard.html").read_bytes()
    return web.Response(body=page, content_type="text/html", charset="utf-8")


def build_admin_app(gw: Gateway) -> web.Application:
    token = gw.runtime.cfg.admin_secret()
    app = web.Application(middlewares=[_token_guard(token)] if token else [])
    app[GATEWAY] = gw
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/config", config)
    app.router.add_post("/api/reload", reload)
    app.router.add_get("/api/replicas", replicas)
    app.router.add_post("/api/replicas/{name}/{action:drain|undrain}", drain)
    app.router.add_get("/api/models", models)
    app.router.add_get("/api/scale", scale)
    app.router.add_get("/api/traffic", traffic)
    app.router.add_get("/api/cache", cache)
    app.router.add_get("/api/tenants", tenants)
    app.router.add_get("/api/cost", cost)
    app.router.add_get("/api/rollouts", rollouts)
    app.router.add_post("/api/rollouts/{model}/{action}", rollout_action)
    app.router.add_get("/", dashboard)
    return app
