"""DNS discovery against a real DNS server on 127.0.0.1 (tests/support/dns.py): A/AAAA and SRV
records become replicas with deterministic names; failures and empty answers keep the last
known set and say "stale"; short TTLs shorten the wait; reloads keep known addresses; the
config entry refuses what it cannot use, with precise messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from gateway.config import ConfigError, Replica
from gateway.config.discovery import Discovery
from gateway.fleet.discovery import DnsDiscovery
from tests.support.dns import DnsServer, start_dns

SVC = "svc.test."
SRV = "_grpc._tcp.svc.test."


@pytest.fixture(scope="module")
def dns_server() -> Iterator[DnsServer]:
    server = start_dns()
    try:
        yield server
    finally:
        server.stop()


def zone(names: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"names": names, **top}


def a_records(*addresses: str, ttl: int = 30) -> dict[str, Any]:
    return {"ttl": ttl, "A": [a for a in addresses if ":" not in a],
            "AAAA": [a for a in addresses if ":" in a]}


def entry(server: DnsServer, **overrides: Any) -> Discovery:
    settings: dict[str, Any] = {"name": "tf", "dns": SVC, "resolver": server.address,
                                "rest_port": 8501, "grpc_port": 8500, "timeout_s": 0.3,
                                "interval_s": 30}
    settings.update(overrides)
    return Discovery.model_validate(settings)


class Changes:
    """The on_change receiver: every set it was handed, in order."""

    def __init__(self) -> None:
        self.sets: list[list[Replica]] = []

    def __call__(self, replicas: list[Replica]) -> None:
        self.sets.append(replicas)

    def names(self, i: int = -1) -> list[str]:
        return [r.name for r in self.sets[i]]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- answers become replicas


def test_a_and_aaaa_records_become_replicas(dns_server: DnsServer) -> None:
    dns_server.set_zone(zone({SVC: a_records("10.0.0.7", "10.0.0.10", "fd00::7")}))
    changes = Changes()
    disc = DnsDiscovery([entry(dns_server, metrics_port=9400, pool="gpu", capacity_rps=400,
                               weight=2)], changes)

    assert asyncio.run(disc.resolve_once()) is True
    assert changes.names() == ["tf-10.0.0.7", "tf-10.0.0.10", "tf-fd00--7"]  # by address, v4 first
    first, _, v6 = changes.sets[-1]
    assert first == Replica(name="tf-10.0.0.7", rest="10.0.0.7:8501", grpc="10.0.0.7:8500",
                            metrics="http://10.0.0.7:9400/metrics", pool="gpu", capacity_rps=400,
                            weight=2)
    assert (v6.rest, v6.grpc, v6.metrics) == ("[fd00::7]:8501", "[fd00::7]:8500",
                                              "http://[fd00::7]:9400/metrics")
    assert disc.replicas() == changes.sets[-1]

    # The same answer again: no change, no call.
    assert asyncio.run(disc.resolve_once()) is False
    assert len(changes.sets) == 1
    [status] = disc.status()
    assert status["addresses"] == ["10.0.0.7", "10.0.0.10", "[fd00::7]"]
    assert status["stale"] is False and status["last_error"] is None
    assert status["last_ok"] == pytest.approx(time.time(), abs=30)


def test_every_gateway_names_the_same_set_identically(dns_server: DnsServer) -> None:
    dns_server.set_zone(zone({SVC: a_records("10.0.0.2", "10.0.0.1", "fd00::1:2")}))
    views = []
    for _ in range(2):  # two gateways resolving the same records
        changes = Changes()
        asyncio.run(DnsDiscovery([entry(dns_server)], changes).resolve_once())
        views.append(changes.sets[-1])
    assert views[0] == views[1]
    assert [r.name for r in views[0]] == ["tf-10.0.0.1", "tf-10.0.0.2", "tf-fd00--1-2"]


def test_records_added_and_removed_reach_on_change(dns_server: DnsServer) -> None:
    changes = Changes()
    disc = DnsDiscovery([entry(dns_server, grpc_port=None)], changes)

    async def scenario() -> None:
        dns_server.set_zone(zone({SVC: a_records("10.0.0.1", "10.0.0.2")}))
        assert await disc.resolve_once()
        dns_server.set_zone(zone({SVC: a_records("10.0.0.1", "10.0.0.2", "10.0.0.3")}))
        assert await disc.resolve_once()
        dns_server.set_zone(zone({SVC: a_records("10.0.0.3")}))
        assert await disc.resolve_once()

    asyncio.run(scenario())
    assert [changes.names(i) for i in range(3)] == [
        ["tf-10.0.0.1", "tf-10.0.0.2"],
        ["tf-10.0.0.1", "tf-10.0.0.2", "tf-10.0.0.3"],
        ["tf-10.0.0.3"],
    ]
    assert changes.sets[-1][0].grpc is None and changes.sets[-1][0].rest == "10.0.0.3:8501"


@pytest.mark.parametrize("additional", [True, False], ids=["additional-section", "asked-for"])
def test_srv_records_give_the_grpc_port(dns_server: DnsServer, additional: bool) -> None:
    dns_server.set_zone(zone({
        SRV: {"ttl": 30, "SRV": ["0 1 8500 r1.svc.test.", "0 1 8600 r1.svc.test.",
                                 "10 1 8500 r2.svc.test.", "0 0 1 ."]},
        "r1.svc.test.": a_records("10.0.1.1"),
        "r2.svc.test.": a_records("10.0.1.2", "fd00::2"),
    }, srv_additional=additional))
    changes = Changes()
    disc = DnsDiscovery([entry(dns_server, dns=None, srv=SRV, grpc_port=None)], changes)

    assert asyncio.run(disc.resolve_once())
    assert changes.names() == ["tf-10.0.1.1-8500", "tf-10.0.1.1-8600", "tf-10.0.1.2-8500",
                               "tf-fd00--2-8500"]
    r = changes.sets[-1][1]
    assert (r.grpc, r.rest) == ("10.0.1.1:8600", "10.0.1.1:8501")
    assert disc.status()[0]["addresses"][-1] == "[fd00::2]:8500"


# ---------------------------------------------------------------- failures keep the known set


@pytest.mark.parametrize("broken,expect", [
    ({SVC: {"mode": "servfail"}}, "SERVFAIL"),
    ({}, "does not exist"),  # NXDOMAIN
    ({SVC: a_records()}, "empty answer: no A/AAAA records for svc.test."),
    ({SVC: {"mode": "drop"}}, "lifetime expired"),
], ids=["servfail", "nxdomain", "empty", "no-answer"])
def test_a_failed_answer_keeps_the_last_known_set(dns_server: DnsServer, broken: dict[str, Any],
                                                  expect: str, caplog: pytest.LogCaptureFixture
                                                  ) -> None:
    changes = Changes()
    disc = DnsDiscovery([entry(dns_server)], changes)
    caplog.set_level(logging.INFO, logger="infergate.discovery")

    async def scenario() -> None:
        dns_server.set_zone(zone({SVC: a_records("10.0.0.1", "10.0.0.2")}))
        assert await disc.resolve_once()
        known = disc.replicas()

        dns_server.set_zone(zone(broken))
        for _ in range(2):
            assert await disc.resolve_once() is False
            assert disc.replicas() == known
        [status] = disc.status()
        assert status["stale"] is True
        assert expect in status["last_error"]
        assert status["addresses"] == ["10.0.0.1", "10.0.0.2"]

        dns_server.set_zone(zone({SVC: a_records("10.0.0.2", "10.0.0.3")}))
        assert await disc.resolve_once()
        [status] = disc.status()
        assert (status["stale"], status["last_error"]) == (False, None)

    asyncio.run(scenario())
    assert changes.names() == ["tf-10.0.0.2", "tf-10.0.0.3"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning per transition to stale, not one per round"
    assert "keeping the 2 known addresses" in warnings[0].getMessage()
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_one_failing_entry_does_not_touch_the_others(dns_server: DnsServer) -> None:
    dns_server.set_zone(zone({SVC: a_records("10.0.0.1"), "other.test.": a_records("10.0.9.9")}))
    changes = Changes()
    disc = DnsDiscovery([entry(dns_server), entry(dns_server, name="other", dns="other.test.")],
                        changes)

    async def scenario() -> None:
        assert await disc.resolve_once()
        dns_server.set_zone(zone({SVC: {"mode": "servfail"},
                                  "other.test.": a_records("10.0.9.9", "10.0.9.8")}))
        assert await disc.resolve_once()

    asyncio.run(scenario())
    assert changes.names() == ["other-10.0.9.8", "other-10.0.9.9", "tf-10.0.0.1"]
    assert [s["stale"] for s in disc.status()] == [False, True]


def test_a_failing_on_change_is_offered_the_change_again(dns_server: DnsServer) -> None:
    dns_server.set_zone(zone({SVC: a_records("10.0.0.1")}))
    seen: list[list[Replica]] = []

    def refuse_once(replicas: list[Replica]) -> None:
        seen.append(replicas)
        if len(seen) == 1:
            raise RuntimeError("receiver broke")

    disc = DnsDiscovery([entry(dns_server)], refuse_once)

    async def scenario() -> None:
        with pytest.raises(RuntimeError):
            await disc.resolve_once()
        assert await disc.resolve_once()

    asyncio.run(scenario())
    assert seen[0] == seen[1]


# ---------------------------------------------------------------- schedule: interval and TTL


@pytest.mark.parametrize("ttl,interval,wait", [(3, 30, 3.0), (0, 30, 1.0), (100, 30, 30.0)])
def test_a_shorter_ttl_shortens_the_wait(dns_server: DnsServer, ttl: int, interval: float,
                                         wait: float) -> None:
    dns_server.set_zone(zone({SVC: a_records("10.0.0.1", ttl=ttl)}))
    clock = FakeClock()
    disc = DnsDiscovery([entry(dns_server, interval_s=interval)], Changes(), clock=clock)
    asyncio.run(disc.resolve_once())
    [status] = disc.status()
    assert (status["ttl_s"], status["next_in_s"]) == (ttl, wait)
    clock.now += 0.5
    assert disc.status()[0]["next_in_s"] == wait - 0.5


def test_the_background_loop_follows_the_records(dns_server: DnsServer) -> None:
    """interval 30 s, TTL 1 s: a change is seen within about a second; a reload that adds an
    entry is resolved at once."""
    dns_server.set_zone(zone({SVC: a_records("10.0.0.1", ttl=1),
                              "other.test.": a_records("10.0.9.9")}))
    changes = Changes()
    first = entry(dns_server)
    disc = DnsDiscovery([first], changes)

    async def until(cond: Any, timeout: float) -> float:
        t0 = time.monotonic()
        while not cond():
            assert time.monotonic() - t0 < timeout, changes.sets
            await asyncio.sleep(0.02)
        return time.monotonic() - t0

    async def scenario() -> None:
        await disc.start()
        try:
            assert changes.names() == ["tf-10.0.0.1"]
            dns_server.set_zone(zone({SVC: a_records("10.0.0.1", "10.0.0.2", ttl=1),
                                      "other.test.": a_records("10.0.9.9")}))
            await until(lambda: len(changes.sets) == 2, timeout=2.5)
            disc.configure([first, entry(dns_server, name="other", dns="other.test.")])
            took = await until(lambda: len(changes.sets) == 3, timeout=1.0)
            assert took < 0.5
        finally:
            await disc.close()

    asyncio.run(scenario())
    assert changes.names() == ["other-10.0.9.9", "tf-10.0.0.1", "tf-10.0.0.2"]


def test_start_waits_a_bounded_time_for_a_silent_server(dns_server: DnsServer) -> None:
    dns_server.set_zone(zone({SVC: {"mode": "drop"}}))
    disc = DnsDiscovery([entry(dns_server, timeout_s=2.0)], Changes())

    async def scenario() -> float:
        t0 = time.monotonic()
        await disc.start(wait_s=0.3)
        took = time.monotonic() - t0
        await disc.close()
        return took

    assert asyncio.run(scenario()) < 1.0
    assert disc.replicas() == []


# ---------------------------------------------------------------- reloads


def test_configure_keeps_the_addresses_of_unchanged_entries(dns_server: DnsServer) -> None:
    dns_server.set_zone(zone({SVC: a_records("10.0.0.1"), "other.test.": a_records("10.0.9.9")}))
    changes = Changes()
    disc = DnsDiscovery([entry(dns_server), entry(dns_server, name="other", dns="other.test.")],
                        changes)
    asyncio.run(disc.resolve_once())
    dns_server.set_zone(zone({SVC: {"mode": "servfail"}}))

    # Same (name, query), new pool: the known address stays, under the new settings.
    disc.configure([entry(dns_server, pool="gpu"), entry(dns_server, name="other", dns="new.test.")])
    assert [(r.name, r.pool) for r in disc.replicas()] == [("tf-10.0.0.1", "gpu")]
    assert len(changes.sets) == 1, "configure leaves on_change to the resolutions"
    assert asyncio.run(disc.resolve_once()) is False  # tf stale (kept), new.test NXDOMAIN (empty)
    assert [(s["name"], s["query"], s["stale"]) for s in disc.status()] == [
        ("other", "new.test.", True), ("tf", SVC, True)]

    with pytest.raises(ConfigError, match=r"names must be unique; repeated: \['tf'\]"):
        disc.configure([entry(dns_server), entry(dns_server, dns="x.test.")])
    assert [s["name"] for s in disc.status()] == ["other", "tf"]  # the refused one changed nothing


# ---------------------------------------------------------------- the config entry


@pytest.mark.parametrize("change,expect", [
    ({"dns": None}, "set exactly one of dns (A/AAAA records) and srv (SRV records)"),
    ({"srv": SRV}, "set exactly one of dns"),
    ({"dns": None, "srv": SRV}, "with srv, the SRV records give the gRPC port; drop grpc_port"),
    ({"rest_port": None, "grpc_port": None}, "a replica needs rest_port or grpc_port"),
    ({"rest_port": 0}, "rest_port\n  Value error, a port is 1..65535, got 0"),
    ({"grpc_port": 65536}, "a port is 1..65535, got 65536"),
    ({"metrics_port": -1}, "a port is 1..65535, got -1"),
    ({"resolver": "dns.local:53"}, "expected IP:PORT (an IPv6 address in brackets)"),
    ({"resolver": "::1:53"}, "expected IP:PORT (an IPv6 address in brackets)"),
    ({"resolver": "127.0.0.1"}, "expected IP:PORT"),
    ({"resolver": "127.0.0.1:0"}, "expected IP:PORT with a port 1..65535"),
    ({"name": "tf serving"}, "may hold only letters, digits, '_', '.' and '-', got 'tf serving'"),
    ({"dns": "bad name!"}, "expected a DNS name, got 'bad name!'"),
    ({"interval_s": 0.5}, "interval_s\n  Input should be greater than or equal to 1"),
    ({"weight": 0}, "weight\n  Input should be greater than 0"),
    ({"port": 8501}, "port\n  Extra inputs are not permitted"),
])
def test_the_config_entry_refuses_with_precise_messages(change: dict[str, Any], expect: str) -> None:
    settings: dict[str, Any] = {"name": "tf", "dns": SVC, "rest_port": 8501, "grpc_port": 8500}
    settings.update(change)
    with pytest.raises(ValidationError) as err:
        Discovery.model_validate(settings)
    assert expect in str(err.value)


def test_the_config_entry_accepts_the_documented_forms() -> None:
    d = Discovery.model_validate({"name": "tf-serving.v2", "srv": "_grpc._tcp.tfserving.ns.svc",
                                  "resolver": "[::1]:5353", "rest_port": 8501})
    assert (d.query, d.resolver_address(), d.grpc_port, d.pool, d.weight, d.interval_s) == (
        "_grpc._tcp.tfserving.ns.svc", ("::1", 5353), None, "default", 1.0, 5.0)
    plain = Discovery.model_validate({"name": "tf", "dns": "tfserving", "grpc_port": 8500})
    assert plain.resolver_address() is None
