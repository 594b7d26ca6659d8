"""Per-request routing work, measured alone: what one call costs in the gateway between the
ingress and the transport (admission, resolution, split, sticky ranking, balancing, retry
bookkeeping, completion hooks and metrics), with a forwarder that answers at once.

Run as `python -m benchmarks.routing --config FILE` against a live backend (the health checker
must see the model AVAILABLE); prints one JSON line {"us_per_call": ..., "calls": ...}.
The figure is CPU-bound wall time on a pinned core, averaged over many calls.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gateway.call import Answer, Call
from gateway.replicas import ReplicaState
from gateway.wire import RestRequest, parse_rest_path


class InstantForwarder:
    async def send(self, call: Call, replica: ReplicaState, version: int | None,
                   timeout: float) -> Answer:
        return Answer(200, b"{}", [("content-type", "application/json")], replica=replica.name,
                      version=version)

    def retryable(self, answer: Answer) -> bool:
        return False


async def measure(config: Path, calls: int) -> float:
    from gateway.app import Gateway
    from gateway.config import load_config

    gw = Gateway(load_config(config), None)
    await gw.health.probe_all()
    path = "/v1/models/half_plus_two:predict"
    target = parse_rest_path("POST", path)
    assert target is not None
    fwd = InstantForwarder()
    headers = {"host": "gw", "content-type": "application/json", "x-session-id": "s1"}
    extra = RestRequest("POST", path, "", target)

    async def one() -> None:
        t0 = time.monotonic()
        call = Call("rest", target.verb, target.model, target.version, target.label, "", headers,
                    b"{}", None, extra)
        answer = await gw.pipeline.handle(call, fwd)
        gw.observe_call("rest", call.model, answer, str(answer.status), t0)

    for _ in range(min(2000, calls)):
        await one()
    start = time.perf_counter()
    for _ in range(calls):
        await one()
    elapsed = time.perf_counter() - start
    await gw.close()
    return elapsed / calls * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.routing")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--calls", type=int, default=50_000)
    args = p.parse_args(argv)
    import uvloop

    us = uvloop.run(measure(args.config, args.calls))
    print(json.dumps({"us_per_call": round(us, 2), "calls": args.calls}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
