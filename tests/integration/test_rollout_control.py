"""Driving a canary rollout by hand, and rollouts that outlive a gateway process.

Pause, resume, abort and promote through the admin API and through `infergate rollout`
(`python -m gateway.commands.cli rollout ACTION MODEL --admin URL`); a gateway restarted in the middle of
a rollout (state in a `state_file:`, or in Redis) continues at the same step; two gateways on one
Redis see the same step and the same operator actions.

Real replicas (test_rollout_support), real gateways and redis-server. Shares of calls are
checked against Binomial(n, w) within 4 standard deviations.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.gwproc import ROOT, GatewayProc, http
from tests.integration.test_rollout_support import (  # noqa: F401 - fixtures
    CANARY_REPLICA,
    MODEL,
    STABLE_REPLICA,
    RolloutFleet,
    WebhookReceiver,
    by_replica,
    by_version,
    fast_rollout,
    fleet_knobs_fixture,
    gateway_cfg,
    rfleet_fixture,
    rollout,
    traffic,
    wait_gateway_sees,
    wait_rollout,
    webhook_fixture,
)
from tests.integration.test_routing_support import Req, fire, within_sigmas
from tests.support.procs import RedisProc, free_port, start_redis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
# Wide latency limit: both arms are the same model on a shared machine (see test_rollout_progress).
ROLLOUT = fast_rollout(max_p95_ratio=10.0)


def act(gw: GatewayProc, action: str, reason: str | None = None) -> tuple[int, Any]:
    return gw.api(f"/api/rollouts/{MODEL}/{action}", "POST",
                  {"reason": reason} if reason else None)


def cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.commands.cli", "rollout", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def canary_share(gw: GatewayProc, n: int = 300) -> tuple[int, int]:
    """(calls answered by the canary replica, n) for n plain predict calls."""
    results = fire(gw.rest_url, [Req()] * n, concurrency=3)
    assert all(r.status == 200 for r in results)
    return by_replica(results)[CANARY_REPLICA], n


def test_pause_resume_abort_promote_via_admin_api(
        fleet_knobs: RolloutFleet, gateway_factory: Any, webhook: WebhookReceiver) -> None:
    webhook.clear()
    gw = gateway_factory(gateway_cfg(fleet_knobs, 3, rollout=ROLLOUT,
                                     webhooks=[{"url": webhook.url}]))
    wait_gateway_sees(gw, [1, 3])

    status, ro = act(gw, "pause", "hold for the test")
    assert status == 200, ro
    assert (ro["state"], ro["step"], ro["weight"], ro["reason"]) == ("paused", 1, 10,
                                                                       "hold for the test")
    # Paused holds the step: more than a step's time and min_requests canary calls pass.
    with traffic(gw) as bg:
        end = time.monotonic() + ROLLOUT["step_s"] + 1
        while time.monotonic() < end or by_replica(bg.results)[CANARY_REPLICA] < 40:
            bg.wait_for(20)
    results = bg.results
    ro = rollout(gw)
    assert (ro["state"], ro["step"], ro["weight"]) == ("paused", 1, 10)
    ok, msg = within_sigmas(by_replica(results)[CANARY_REPLICA], len(results), 0.10)
    assert ok, f"paused at 10 %: canary {msg}"
    assert act(gw, "pause")[0] == 409

    status, ro = act(gw, "resume")
    assert status == 200 and (ro["state"], ro["step"], ro["weight"]) == ("progressing", 1, 10)

    status, ro = act(gw, "abort", "bad dashboard numbers")
    assert status == 200 and (ro["state"], ro["weight"]) == ("rolled_back", 0)
    assert "bad dashboard numbers" in ro["reason"]
    assert canary_share(gw) == (0, 300)
    assert act(gw, "abort")[0] == 409
    assert rollout(gw)["state"] == "rolled_back"  # a refused action changes nothing

    # Resuming a rolled back rollout retries it from the first step.
    status, ro = act(gw, "resume")
    assert status == 200 and (ro["state"], ro["step"], ro["weight"]) == ("progressing", 1, 10)
    k, n = canary_share(gw)
    ok, msg = within_sigmas(k, n, 0.10)
    assert ok, f"retried at 10 %: canary {msg}"

    status, ro = act(gw, "promote")
    assert status == 200 and (ro["state"], ro["weight"], ro["promote_to"]) == ("promoted", 100, 3)
    labelled = fire(gw.rest_url, [Req(path=f"/v1/models/{MODEL}/labels/stable:predict")] * 20)
    assert by_version(labelled) == {"3": 20}
    assert act(gw, "promote")[0] == 409
    assert act(gw, "resume")[0] == 409

    assert act(gw, "explode")[0] == 409
    status, body = gw.api("/api/rollouts/no_such_model/pause", "POST")
    assert status == 404 and "no_such_model" in body["error"]
    status, _, raw = http("POST", gw.admin_url + f"/api/rollouts/{MODEL}/pause", raw=b"{not json")
    assert status == 400 and b"JSON" in raw

    webhook.wait_kind("promoted")
    seen = [(e["kind"], e["state"]) for e in webhook.rollout_events()]
    assert seen == [("paused", "paused"), ("resumed", "progressing"),
                    ("rolled_back", "rolled_back"), ("resumed", "progressing"),
                    ("promoted", "promoted")], seen
    assert [h["kind"] for h in ro["history"]] == [k for k, _ in seen]


def test_a_paused_canary_that_fails_is_still_rolled_back(
        fleet_knobs: RolloutFleet, gateway_factory: Any) -> None:
    # The canary replica alone in its pool: never ejected as an outlier (see
    # test_rollout_progress for what ejection does to a rollout).
    gw = gateway_factory(gateway_cfg(fleet_knobs, 3, rollout=ROLLOUT, canary_pool="canary"))
    wait_gateway_sees(gw, [1, 3])
    assert act(gw, "pause")[0] == 200
    fleet_knobs.canary.set_knobs(error_rate=0.5)
    with traffic(gw):
        ro = wait_rollout(gw, 30, "the paused, failing canary to be rolled back",
                          state="rolled_back")
    assert [h["kind"] for h in ro["history"]] == ["paused", "rolled_back"]
    assert "error_rate" in ro["reason"] and ro["weight"] == 0
    assert canary_share(gw, 100) == (0, 100)


def test_rollout_cli_drives_the_same_api(fleet_knobs: RolloutFleet, gateway_factory: Any) -> None:
    gw = gateway_factory(gateway_cfg(fleet_knobs, 3, rollout=ROLLOUT))
    admin = gw.admin_url

    out = cli("status", MODEL, "--admin", admin)
    assert out.returncode == 0, out.stderr
    assert f"{MODEL}: progressing, step 1/3, canary weight 10%" in out.stdout
    assert "error_rate" in out.stdout and "requests" in out.stdout

    out = cli("pause", MODEL, "--admin", admin, "--reason", "from the cli")
    assert out.returncode == 0, out.stderr
    assert f"{MODEL}: paused, step 1/3" in out.stdout
    ro = rollout(gw)
    assert (ro["state"], ro["reason"]) == ("paused", "from the cli")

    out = cli("pause", MODEL, "--admin", admin)
    assert out.returncode == 1 and "cannot pause" in out.stderr and out.stderr.count("\n") == 1

    out = cli("resume", MODEL, "--admin", admin)
    assert out.returncode == 0 and rollout(gw)["state"] == "progressing", out.stderr

    out = cli("abort", MODEL, "--admin", admin)
    assert out.returncode == 0 and "rolled_back" in out.stdout, out.stderr
    assert rollout(gw)["weight"] == 0

    out = cli("status", MODEL, "--admin", admin, "--json")
    assert out.returncode == 0
    assert json.loads(out.stdout)[MODEL]["state"] == "rolled_back"

    out = cli("promote", MODEL, "--admin", admin)
    assert out.returncode == 0 and "stable now serves: 3" in out.stdout, out.stderr
    assert rollout(gw)["state"] == "promoted"

    out = cli("abort", MODEL, "--admin", admin)
    assert out.returncode == 1 and "promoted" in out.stderr
    out = cli("pause", "no_such_model", "--admin", admin)
    assert out.returncode == 1 and "no_such_model" in out.stderr
    out = cli("status", "--admin", f"http://127.0.0.1:{free_port()}", "--timeout", "2")
    assert out.returncode == 2 and "cannot reach" in out.stderr


def _walk_to_step_2(gw: GatewayProc) -> dict[str, Any]:
    with traffic(gw):
        return wait_rollout(gw, 30, "step 2", step=2)


def test_restart_continues_at_the_same_step_from_the_state_file(
        fleet_knobs: RolloutFleet, gateway_factory: Any, tmp_path: Any) -> None:
    state_file = tmp_path / "rollouts.json"
    cfg = gateway_cfg(fleet_knobs, 3, rollout=ROLLOUT, state_file=str(state_file))
    gw = gateway_factory(cfg, name="first")
    wait_gateway_sees(gw, [1, 3])
    ro = _walk_to_step_2(gw)
    assert gw.stop() == 0
    saved = json.loads(state_file.read_text())["rollouts"][MODEL]
    assert (saved["state"], saved["step"]) == ("progressing", 2)

    again = gateway_factory(cfg, name="second")
    ro2 = rollout(again)
    assert (ro2["state"], ro2["step"], ro2["weight"]) == ("progressing", 2, 50)
    assert ro2["step_started_at"] == ro["step_started_at"] and ro2["rev"] == saved["rev"]
    assert ro2["history"] == saved["history"]
    # Held there (with traffic, step 2 would pass within the test), the restarted gateway routes
    # at the restored step's weight.
    assert act(again, "pause")[0] == 200
    wait_gateway_sees(again, [1, 3])
    k, n = canary_share(again, 300)
    ok, msg = within_sigmas(k, n, 0.50)
    assert ok, f"after restart at 50 %: canary {msg}"
    # Resumed, it carries on from step 2: step 1 is not walked again.
    assert act(again, "resume")[0] == 200
    with traffic(again):
        ro3 = wait_rollout(again, 30, "promotion after the restart", state="promoted")
    assert [(h["kind"], h["step"]) for h in ro3["history"]] == [
        ("step", 2), ("paused", 2), ("resumed", 2), ("step", 3), ("promoted", 3)]


@pytest.fixture
def redis() -> Iterator[RedisProc]:
    r = start_redis()
    yield r
    r.stop()


def test_two_gateways_on_one_redis_share_the_step_and_survive_a_restart(
        fleet_knobs: RolloutFleet, gateway_factory: Any, redis: RedisProc) -> None:
    cfg = gateway_cfg(fleet_knobs, 3, rollout=ROLLOUT, cache={"store": redis.url})
    a = gateway_factory(cfg, name="a")
    b = gateway_factory(cfg, name="b")
    wait_gateway_sees(a, [1, 3])
    wait_gateway_sees(b, [1, 3])
    # Only A carries traffic; B learns every step from Redis (it polls every 2 s).
    ro_a = _walk_to_step_2(a)
    ro_b = wait_rollout(b, 10, "gateway B to see step 2", step=2)
    assert ro_b["state"] == "progressing"
    assert ro_b["step_started_at"] == ro_a["step_started_at"]

    # An operator action on B reaches A.
    assert act(b, "pause", "paused on b")[0] == 200
    ro_a = wait_rollout(a, 10, "gateway A to see the pause", state="paused")
    assert (ro_a["step"], ro_a["reason"]) == (2, "paused on b")
    # Both route at the shared step's weight.
    for g in (a, b):
        k, n = canary_share(g, 300)
        ok, msg = within_sigmas(k, n, 0.50)
        assert ok, f"{g.config_path.stem} at 50 %: canary {msg}"

    # A restarted gateway continues from Redis at the same step and state.
    assert a.stop() == 0
    a2 = gateway_factory(cfg, name="a2")
    ro = rollout(a2)
    assert (ro["state"], ro["step"], ro["weight"]) == ("paused", 2, 50)
    assert ro["step_started_at"] == ro_a["step_started_at"]
    assert act(a2, "resume")[0] == 200
    wait_rollout(b, 10, "gateway B to see the resume", state="progressing", step=2)
