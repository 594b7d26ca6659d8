"""The prediction cache through a real gateway process in front of real replicas.

Exact-match cache: a hit answers byte for byte what the miss answered (REST and gRPC through the
official tensorflow_serving stubs), canonical JSON variants share a key, errors are never kept,
TTL and the byte budget evict, and a label moved to another version never answers from the old
one. Single-flight: 100 concurrent identical calls reach the replica once. Redis: two gateways
share hits, and a Redis killed by SIGKILL mid-run costs no request and comes back by itself.
Similarity cache on the `embed` model: near duplicates hit, far inputs miss, and the background
verifier measures a planted false-hit rate and tightens the threshold.

Replica calls are counted on the replicas themselves (their own Prometheus counter), never
inferred from the gateway's headers.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import grpc
import pytest
import redis
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tests.integration.conftest import Fleet, model_config, start_fleet
from tests.integration.gwproc import GatewayProc, http
from tests.support.procs import RedisProc, ReplicaProc, start_redis, start_replica

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server missing")
PREDICT = "/v1/models/half_plus_two:predict"


# ---------------------------------------------------------------- helpers


def calls(replicas: list[ReplicaProc], model: str = "half_plus_two") -> int:
    """Inference calls the replicas themselves counted."""
    return sum(r.request_count(model) for r in replicas)


def post(g: GatewayProc, body: Any = None, path: str = PREDICT, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return http("POST", g.rest_url + path, body, headers, raw=raw)


def metric(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of `name` whose labels include `labels`; None when there is none."""
    total: float | None = None
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total = (total or 0.0) + float(m.group(3))
    return total


def cache_stats(g: GatewayProc, model: str = "half_plus_two") -> dict[str, int]:
    status, out = g.api("/api/cache")
    assert status == 200, out
    return dict(out["models"][model]["stats"])


def wait_for(what: str, check: Any, timeout: float = 20.0, every: float = 0.05) -> Any:
    """Poll `check()` until it returns something truthy; fail naming `what` after `timeout`."""
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def exact(ttl_s: float = 60.0, **kw: int) -> dict[str, Any]:
    return {"exact": {"ttl_s": ttl_s, **kw}}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fleet(models_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One replica is enough here (and a replica is the costly part of this module)."""
    f = start_fleet(models_dir, tmp_path_factory.mktemp("fleet"), n=1)
    yield f
    for r in f.replicas:
        r.stop()


@pytest.fixture(scope="module")
def gw(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProc]:
    cfg = {"replicas": fleet.replica_cfg(),
           "models": {"half_plus_two": {"cache": exact()},
                      "embed": {"cache": {"similarity": {"input": "x", "threshold": 0.99,
                                                         "verify_fraction": 0.0}}}}}
    g = GatewayProc(cfg, tmp_path_factory.mktemp("gw-cache"))
    yield g
    g.stop()


@pytest.fixture(scope="module")
def slow_replica(fleet: Fleet) -> Iterator[ReplicaProc]:
    cfg = model_config(fleet.models, fleet.config_file.parent / "slow.config")
    r = start_replica(cfg, name="slow", extra_args=["--latency_ms=200"])
    yield r
    r.stop()


@pytest.fixture
def redis_proc() -> Iterator[list[RedisProc]]:
    """A redis-server on a free port; the list holds the current process (a test may restart it)."""
    procs = [start_redis()]
    yield procs
    for p in procs:
        p.stop()


def redis_keys(url: str, model: str = "half_plus_two") -> set[bytes]:
    client = redis.Redis.from_url(url, socket_timeout=1.0)
    try:
        return set(client.scan_iter(match=f"infergate:cache:{model}:*".encode(), count=1000))
    except redis.RedisError:
        return set()
    finally:
        client.close()


# ---------------------------------------------------------------- exact cache, REST and gRPC


def test_rest_hit_is_byte_identical_and_canonical_variants_hit(gw: GatewayProc, fleet: Fleet) -> None:
    before = calls(fleet.replicas)
    s1, h1, b1 = post(gw, {"instances": [11.0, 12.0]})
    s2, h2, b2 = post(gw, {"instances": [11.0, 12.0]})
    assert (s1, s2) == (200, 200)
    assert (h1["x-infergate-cache"], h2["x-infergate-cache"]) == ("miss", "hit")
    assert b2 == b1  # the stored answer, byte for byte
    assert json.loads(b1)["predictions"] == [8.5, 9.0]  # latest is v2: x / 2 + 3
    assert h2["x-infergate-version"] == h1["x-infergate-version"] == "2"
    assert h2["content-type"] == h1["content-type"]

    # Whitespace and key order are not part of the key: the canonical body is.
    s3, h3, b3 = post(gw, raw=b'{ "instances" :\n [11.0,   12.0] }')
    assert s3 == 200 and h3["x-infergate-cache"] == "hit" and b3 == b1
    a = post(gw, raw=b'{"signature_name": "serving_default", "instances": [13.0]}')
    b = post(gw, raw=b'{"instances": [13.0], "signature_name": "serving_default"}')
    assert (a[1]["x-infergate-cache"], b[1]["x-infergate-cache"]) == ("miss", "hit")
    assert a[2] == b[2]

    # Cache-Control: no-cache goes upstream even though the answer is cached.
    s4, h4, b4 = post(gw, {"instances": [11.0, 12.0]}, headers={"Cache-Control": "no-cache"})
    assert s4 == 200 and h4["x-infergate-cache"] == "miss" and json.loads(b4) == json.loads(b1)
    assert calls(fleet.replicas) - before == 3  # two misses, one bypass


def _tensor(values: list[float]) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]),
        float_val=values)


def test_grpc_hit_is_byte_identical(gw: GatewayProc, fleet: Fleet) -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.version.value = 1
    request.inputs["x"].CopyFrom(_tensor([21.0, 22.0, 23.0]))
    before = calls(fleet.replicas)
    with grpc.insecure_channel(gw.grpc_addr) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        first, call1 = stub.Predict.with_call(request, timeout=10)
        second, call2 = stub.Predict.with_call(request, timeout=10)
    md1, md2 = dict(call1.initial_metadata()), dict(call2.initial_metadata())
    assert (md1["x-infergate-cache"], md2["x-infergate-cache"]) == ("miss", "hit")
    assert md1["x-infergate-version"] == md2["x-infergate-version"] == "1"
    assert second.SerializeToString() == first.SerializeToString()
    assert list(first.outputs["y"].float_val) == [12.5, 13.0, 13.5]
    assert first.model_spec.version.value == 1
    assert calls(fleet.replicas) - before == 1


def test_errors_are_never_cached(gw: GatewayProc, fleet: Fleet) -> None:
    bad = {"instances": [[1.0, 2.0], [3.0]]}  # ragged: the replica refuses it
    before = calls(fleet.replicas)
    for _ in range(3):
        status, h, out = post(gw, bad)
        assert status == 400 and h["x-infergate-cache"] == "miss", out
        assert "error" in json.loads(out)
    assert calls(fleet.replicas) - before == 3  # every one went to a replica


def test_ttl_expiry_evicts(fleet: Fleet, gateway_factory: Any) -> None:
    g = gateway_factory({"replicas": fleet.replica_cfg(),
                         "models": {"half_plus_two": {"cache": exact(ttl_s=1.0)}}})
    body = {"instances": [31.0]}
    before = calls(fleet.replicas)
    assert post(g, body)[1]["x-infergate-cache"] == "miss"
    assert post(g, body)[1]["x-infergate-cache"] == "hit"
    time.sleep(1.3)  # past the one-second TTL
    assert post(g, body)[1]["x-infergate-cache"] == "miss"
    assert post(g, body)[1]["x-infergate-cache"] == "hit"
    assert calls(fleet.replicas) - before == 2
    assert cache_stats(g)["memory_expired"] >= 1


def test_byte_budget_evicts_least_recent(fleet: Fleet, gateway_factory: Any) -> None:
    cfg: dict[str, Any] = {"replicas": fleet.replica_cfg(),
                           "models": {"half_plus_two": {"cache": exact()}}}
    g = gateway_factory(cfg)
    # Measure one entry (key + status + headers + body) on this very gateway, then give the
    # cache room for three and a half of them. Same-width inputs give same-size answers.
    assert post(g, {"instances": [40.0]})[0] == 200
    size = cache_stats(g)["memory_bytes"]
    assert size > 0
    budget = size * 7 // 2
    cfg["models"]["half_plus_two"]["cache"] = exact(max_bytes=budget, max_entry_bytes=budget)
    status, out = g.reload(cfg)
    assert status == 200 and out["ok"], out
    before = calls(fleet.replicas)
    for x in (41.0, 42.0, 43.0, 44.0, 45.0, 46.0):
        assert post(g, {"instances": [x]})[1]["x-infergate-cache"] == "miss"
    stats = cache_stats(g)
    assert stats["memory_bytes"] <= budget and stats["memory_entries"] == 3, stats
    assert stats["memory_evictions"] == 3, stats
    assert post(g, {"instances": [46.0]})[1]["x-infergate-cache"] == "hit"  # most recent: kept
    assert post(g, {"instances": [41.0]})[1]["x-infergate-cache"] == "miss"  # oldest: evicted
    assert calls(fleet.replicas) - before == 7


def test_label_moved_to_new_version_is_never_answered_from_the_old(
        fleet: Fleet, gateway_factory: Any) -> None:
    cfg: dict[str, Any] = {"replicas": fleet.replica_cfg(),
                           "models": {"half_plus_two": {"labels": {"stable": 1}, "cache": exact()}}}
    g = gateway_factory(cfg)
    path = "/v1/models/half_plus_two/labels/stable:predict"
    body = {"instances": [50.0]}
    s, h, out = post(g, body, path)
    assert s == 200 and h["x-infergate-cache"] == "miss" and h["x-infergate-version"] == "1"
    assert json.loads(out)["predictions"] == [27.0]
    assert post(g, body, path)[1]["x-infergate-cache"] == "hit"

    cfg["models"]["half_plus_two"]["labels"] = {"stable": 2}
    status, res = g.reload(cfg)
    assert status == 200 and res["ok"], res
    s, h, out = post(g, body, path)
    assert s == 200 and json.loads(out)["predictions"] == [28.0]  # v2: x / 2 + 3
    assert h["x-infergate-version"] == "2" and h["x-infergate-cache"] == "miss"
    s, h, out = post(g, body, path)
    assert h["x-infergate-cache"] == "hit" and json.loads(out)["predictions"] == [28.0]


# ---------------------------------------------------------------- single flight


def test_concurrent_identical_misses_make_one_replica_call(
        slow_replica: ReplicaProc, gateway_factory: Any) -> None:
    cfg = {"replicas": [{"name": "slow", "rest": f"127.0.0.1:{slow_replica.rest_port}",
                         "grpc": f"127.0.0.1:{slow_replica.grpc_port}"}],
           "models": {"half_plus_two": {"cache": exact()}}}
    g = gateway_factory(cfg)
    body = json.dumps({"instances": [60.0, 61.0]}).encode()

    async def burst() -> list[tuple[int, str, bytes]]:
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn) as session:
            async def one() -> tuple[int, str, bytes]:
                async with session.post(g.rest_url + PREDICT, data=body,
                                        timeout=aiohttp.ClientTimeout(total=30)) as resp:
                    return resp.status, resp.headers.get("x-infergate-cache", ""), await resp.read()
            return await asyncio.gather(*(one() for _ in range(100)))

    before = slow_replica.request_count("half_plus_two")
    results = asyncio.run(burst())
    assert slow_replica.request_count("half_plus_two") - before == 1
    assert {status for status, _, _ in results} == {200}
    assert len({out for _, _, out in results}) == 1
    assert json.loads(results[0][2])["predictions"] == [33.0, 33.5]
    text = g.metrics()
    coalesced = metric(text, "infergate_cache_requests_total", model="half_plus_two",
                       result="coalesced") or 0.0
    hits = metric(text, "infergate_cache_requests_total", model="half_plus_two", result="hit") or 0.0
    assert coalesced >= 1 and coalesced + hits == 99, text  # the others waited for the leader


# ---------------------------------------------------------------- Redis


@needs_redis
def test_two_gateways_share_hits_through_redis(
        fleet: Fleet, gateway_factory: Any, redis_proc: list[RedisProc]) -> None:
    url = redis_proc[0].url
    cfg = {"replicas": fleet.replica_cfg(), "cache": {"store": url},
           "models": {"half_plus_two": {"cache": exact()}}}
    a, b = gateway_factory(cfg, name="a"), gateway_factory(cfg, name="b")
    body = {"instances": [70.0, 71.0]}
    before = calls(fleet.replicas)
    s1, h1, out1 = post(a, body)
    assert s1 == 200 and h1["x-infergate-cache"] == "miss"
    wait_for("the entry in Redis", lambda: redis_keys(url), timeout=10)  # written in the background
    s2, h2, out2 = post(b, body)
    assert s2 == 200 and h2["x-infergate-cache"] == "hit" and out2 == out1
    assert calls(fleet.replicas) - before == 1
    assert cache_stats(b)["hits_redis"] == 1


class ClientLoop:
    """Sends predict calls from a thread until stopped and counts failures: three of every four
    go round a small set of bodies (memory hits), the fourth is new (a miss, which is also what
    lets the Redis tier probe its way back: a circuit is re-tried by the next call that needs it)."""

    def __init__(self, g: GatewayProc, distinct: int = 20) -> None:
        self.g, self.distinct = g, distinct
        self.sent = self.failed = 0
        self.outcomes: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            x = 100.0 + i % self.distinct if i % 4 else 1000.0 + i
            body = {"instances": [x]}
            i += 1
            try:
                status, h, out = post(self.g, body)
            except OSError as exc:
                status, h, out = 0, {}, repr(exc).encode()
            self.sent += 1
            if status != 200:
                self.failed += 1
                self.errors.append(f"{status}: {out[:200]!r}")
            self.outcomes.append(h.get("x-infergate-cache", ""))
            time.sleep(0.005)

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@needs_redis
def test_redis_killed_mid_run_costs_no_request_and_comes_back(
        fleet: Fleet, gateway_factory: Any, redis_proc: list[RedisProc]) -> None:
    first = redis_proc[0]
    url = first.url
    cfg = {"replicas": fleet.replica_cfg(), "cache": {"store": url},
           "models": {"half_plus_two": {"cache": exact()}}}
    g = gateway_factory(cfg)
    with ClientLoop(g) as loop:
        wait_for("entries in Redis", lambda: len(redis_keys(url)) >= 5, timeout=10)
        os.kill(first.pid, signal.SIGKILL)
        first.stop()  # reaps the killed process
        assert first.returncode == -signal.SIGKILL

        # Redis is gone: the tier's circuit opens and memory alone keeps answering.
        wait_for("the Redis circuit to open",
                 lambda: cache_stats(g)["redis_circuit_state"] != 0, timeout=15)
        hits_then = cache_stats(g)["hits_memory"]
        wait_for("memory hits while Redis is down",
                 lambda: cache_stats(g)["hits_memory"] >= hits_then + 20, timeout=10)

        # Redis returns on the same port, empty: the tier closes its circuit by itself and
        # writes reach it again.
        redis_proc.append(RedisProc(first.argv, port=first.port))
        redis_proc[-1].wait_for_port(first.port, timeout=20)
        wait_for("the Redis circuit to close",
                 lambda: cache_stats(g)["redis_circuit_state"] == 0, timeout=40, every=0.2)
        post(g, {"instances": [999.0]})
        wait_for("a write to reach the new Redis", lambda: redis_keys(url), timeout=10)
    stats = cache_stats(g)
    assert loop.failed == 0, loop.errors[:5]
    assert loop.sent >= 50 and "hit" in loop.outcomes
    assert stats["redis_errors"] >= 1 and stats["redis_circuit_opened"] >= 1, stats


# ---------------------------------------------------------------- similarity


EMBED = "/v1/models/embed:predict"


def embed(g: GatewayProc, x: list[float]) -> tuple[str, bytes]:
    status, h, out = post(g, {"instances": [{"x": x}]}, EMBED)
    assert status == 200, out
    return h["x-infergate-cache"], out


def test_similarity_near_duplicates_hit_far_inputs_miss(gw: GatewayProc, fleet: Fleet) -> None:
    before = calls(fleet.replicas, "embed")
    miss, first = embed(gw, [1.0, 2.0, 3.0, 4.0])
    assert miss == "miss"
    hit, again = embed(gw, [1.0, 2.0, 3.0, 4.01])  # cosine ~0.99999
    assert hit == "hit" and again == first  # the answer the model gave for the neighbour
    far, other = embed(gw, [4.0, -3.0, 2.0, -1.0])  # cosine ~0
    assert far == "miss" and other != first
    assert calls(fleet.replicas, "embed") - before == 2
    text = gw.metrics()
    assert metric(text, "infergate_similarity_requests_total", model="embed", result="hit") == 1


def test_similarity_verifier_measures_planted_false_hits(fleet: Fleet, gateway_factory: Any) -> None:
    sim = {"input": "x", "threshold": 0.5, "verify_fraction": 1.0, "target_false_hit_rate": 0.01}
    g = gateway_factory({"replicas": fleet.replica_cfg(),
                         "models": {"embed": {"cache": {"similarity": sim}}}})
    assert embed(g, [1.0, 0.0, 0.0, 0.0])[0] == "miss"
    # 20 = the index's min_verifications: the 20th re-check tightens the threshold and restarts
    # the window, and the reported rate must still be the one that tripped it.
    n = 20
    for k in range(n):
        # cosine ~0.707 with the stored input: a hit at 0.5, but the model's answer differs.
        assert embed(g, [1.0, 1.0, 0.001 * k, 0.0])[0] == "hit"

    def verified() -> str | None:
        text = g.metrics()
        done = metric(text, "infergate_similarity_verifications_total", model="embed")
        return text if done == n else None

    text = wait_for("every hit to be verified", verified, timeout=30, every=0.2)
    assert metric(text, "infergate_similarity_verifications_total", model="embed",
                  outcome="false_hit") == n
    rate = metric(text, "infergate_similarity_false_hit_rate", model="embed")
    threshold = metric(text, "infergate_similarity_threshold", model="embed")
    assert rate == 1.0, text  # every planted hit disagreed
    assert threshold is not None and 0.5 < threshold < 0.707, text  # tightened, still below
