"""Replica faults under steady load: every call must still succeed.

Each drill runs a steady client load (16 workers with keep-alive connections, 400 calls/s
offered) against a gateway in front of three real replicas, does one harmful thing to the fleet
while the load runs, and counts every failed call. The expected count is zero: a killed
replica's calls are retried on another replica, a hung one is cut off by the per-try timeout and
retried, a restarted one is probed back into rotation. Per-phase call counts and p99 are printed
(run with -s).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tests.faults.conftest import Slot, drill_config
from tests.faults.drill import (
    PHASE,
    assert_no_failures,
    finish,
    replicas_view,
    start_load,
    wait_replica,
)
from tests.faults.load import Load, grpc_predict_client, rest_predict_client
from tests.integration.gwproc import GatewayProc

pytestmark = pytest.mark.integration


@pytest.fixture
def rest_gw(fleet3: list[Slot], gateway_factory: Any) -> Iterator[GatewayProc]:
    yield gateway_factory(drill_config(fleet3))


ENGINES = ["compat", "native"]


VICTIM_LATENCY_MS = 50  # the victim holds each call this long, so calls are on it when it dies


def kill_with_calls_on_it(g: GatewayProc, victim: Slot, load: Load) -> int:
    """SIGKILL `victim` while the gateway has calls in flight on it; how many it had."""
    assert victim.proc is not None
    victim.proc.set_knobs(latency_ms=VICTIM_LATENCY_MS)
    load.wait_more(100)
    in_flight = 0
    for _ in range(200):  # the count is read just before the kill: a snapshot
        in_flight = int(replicas_view(g)[victim.name]["in_flight"])
        if in_flight:
            break
    assert in_flight, f"no call was ever in flight on {victim.name}"
    victim.kill()
    wait_replica(g, victim.name, healthy=False)
    return in_flight


@pytest.mark.parametrize("engine", ENGINES)
def test_replica_sigkill_rest(fleet3: list[Slot], gateway_on: Any, engine: str) -> None:
    """SIGKILL one replica mid-load with calls in flight on it: those calls see a reset, pooled
    idle connections to it are dead, new connects are refused; all of that is retried on the
    other two, so no call fails and the gateway counts retries."""
    g = gateway_on(drill_config(fleet3), engine)
    load = start_load(f"replica SIGKILL (REST, {engine} engine)",
                      rest_predict_client("127.0.0.1", g.rest_port))
    in_flight = kill_with_calls_on_it(g, fleet3[1], load)
    report = finish(load, g)
    print(f"[drill] calls in flight on r1 at SIGKILL: {in_flight}")
    assert_no_failures(report)
    assert report.notes["retries"] >= 1


@pytest.mark.parametrize("engine", ENGINES)
def test_replica_sigkill_grpc(fleet3: list[Slot], gateway_on: Any, engine: str) -> None:
    """The same kill with gRPC clients (official stubs over one channel to the gateway): the
    calls in flight on the dead replica end UNAVAILABLE upstream and are retried."""
    g = gateway_on(drill_config(fleet3), engine)
    with grpc.insecure_channel(g.grpc_addr) as channel:
        load = start_load(f"replica SIGKILL (gRPC, {engine} engine)",
                          grpc_predict_client(channel))
        in_flight = kill_with_calls_on_it(g, fleet3[2], load)
        report = finish(load, g)
    print(f"[drill] calls in flight on r2 at SIGKILL: {in_flight}")
    assert_no_failures(report)
    assert report.notes["retries"] >= 1


def test_replica_sigstop_then_sigcont(fleet3: list[Slot], rest_gw: GatewayProc) -> None:
    """A hung replica (SIGSTOP: the kernel still accepts its connections, nothing answers).

    Operator's choice (see drill_config): per_try_timeout_s 1.0 with 3 attempts. Calls sent to
    the hung replica give up on it after one second and go to the next; consecutive failures
    eject it and the health probes (0.5 s timeout, fall 2) take it out of rotation. Hedging is
    left off: its budget (a few percent of calls) cannot cover a replica that takes a third of
    the traffic, while the per-try timeout covers every call."""
    load = start_load("replica SIGSTOP/SIGCONT (REST)",
                      rest_predict_client("127.0.0.1", rest_gw.rest_port))
    fleet3[0].signal(signal.SIGSTOP)
    wait_replica(rest_gw, "r0", healthy=False)
    load.wait_more(PHASE)
    fleet3[0].signal(signal.SIGCONT)
    wait_replica(rest_gw, "r0", healthy=True)
    assert_no_failures(finish(load, rest_gw))


def test_rolling_restart_on_same_ports(fleet3: list[Slot], rest_gw: GatewayProc) -> None:
    """Every replica restarted one at a time (SIGTERM, start again on the same ports), the next
    one only after the gateway sees the previous one healthy again: a rolling deploy."""
    load = start_load("rolling restart of 3 replicas (REST)",
                      rest_predict_client("127.0.0.1", rest_gw.rest_port))
    for slot in fleet3:
        slot.terminate()
        wait_replica(rest_gw, slot.name, healthy=False)
        slot.start()
        wait_replica(rest_gw, slot.name, healthy=True)
    assert_no_failures(finish(load, rest_gw))
