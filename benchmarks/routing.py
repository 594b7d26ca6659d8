"""Per-request routing work, measured alone: what one call costs in the gateway between the
ingress and the transport (admission, resolution, split, sticky ranking, balancing, retry
bookkeeping, completion hooks and metrics), with a forwarder that answers at once.

Run as `python -m benchmarks.routing --config FILE` against a live backend (the health checker
must see the model AVAILABLE); prints one JSON line {"us_per_call": ...,
"us_per_call_no_session": ..., "calls": ...}: calls with the sticky session header (the
benchmark's traffic), and calls without it, which the fallback balancer ranks. With two
candidates a keyed call needs no balancer (the order after the sticky replica is forced), so the
second figure is the one that includes least_loaded's costs.
The figure is CPU-bound wall time on a pinned core, averaged over many calls.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gateway.core.call import Answer, Call, Upstream
from gateway.core.wire import RestRequest, parse_rest_path


class InstantForwarder:
    async def send(self, call: Call, replica: Upstream, version: int | None,
                   timeout: float) -> Answer:
        return Answer(200, b"{}", [("content-type", "application/json")], replica=replica.name,
                      version=version)

    def retryable(self, answer: Answer) -> bool:
        return False

    async def close(self) -> None:
        return None


async def measure(config: Path, calls: int) -> tuple[float, float]:
    from gateway.app.gateway import Gateway
    from gateway.config import load_config

    gw = Gateway(load_config(config), None)
    await gw.health.probe_all()
    path = "/v1/models/half_plus_two:predict"
    target = parse_rest_path("POST", path)
    assert target is not None
    fwd = InstantForwarder()
    keyed = {"host": "gw", "content-type": "application/json", "x-session-id": "s1"}
    plain = {"host": "gw", "content-type": "application/json"}
    extra = RestRequest("POST", path, "", target)

    async def one(headers: dict[str, str]) -> None:
        t0 = time.monotonic()
        call = Call("rest", target.verb, target.model, target.version, target.label, "", headers,
                    b"{}", None, extra)
        answer = await gw.pipeline.handle(call, fwd)
        gw.observe_call("rest", call.model, answer, str(answer.status), t0)

    figures = []
    for headers in (keyed, plain):
        for _ in range(min(2000, calls)):
            await one(headers)
        start = time.perf_counter()
        for _ in range(calls):
            await one(headers)
        figures.append((time.perf_counter() - start) / calls * 1e6)
    await gw.close()
    return figures[0], figures[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.routing")
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--calls", type=int, default=50_000)
    args = p.parse_args(argv)
    import uvloop

    keyed, plain = uvloop.run(measure(args.config, args.calls))
    print(json.dumps({"us_per_call": round(keyed, 2), "us_per_call_no_session": round(plain, 2),
                      "calls": args.calls}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
