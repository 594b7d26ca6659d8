"""Balancer registry: names come from decorators only, and importing `policies` registers them all."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

import policies
from policies import registry
from policies.base import PickContext
from policies.least_loaded import LeastLoaded
from policies.least_request import LeastRequest
from policies.round_robin import RoundRobin

REPO = Path(__file__).resolve().parents[2]


def test_import_registers_every_balancer() -> None:
    assert policies.balancer_names() == ["least_loaded", "least_request", "round_robin"]
    assert isinstance(policies.make_balancer("least_loaded"), LeastLoaded)
    assert isinstance(policies.make_balancer("least_request"), LeastRequest)
    assert isinstance(policies.make_balancer("round_robin"), RoundRobin)


def test_each_call_builds_a_fresh_instance() -> None:
    # Balancers may keep state (round-robin position); two models must not share it.
    assert policies.make_balancer("round_robin") is not policies.make_balancer("round_robin")


def test_made_balancers_rank() -> None:
    ctx = PickContext(rng=random.Random(1), now=0.0)
    for name in policies.balancer_names():
        assert policies.make_balancer(name).rank([], ctx) == []


def test_unknown_name_is_a_value_error_listing_known_names() -> None:
    with pytest.raises(registry.UnknownBalancerError, match="least_loaded, least_request, round_robin"):
        policies.make_balancer("least-busy")
    assert issubclass(registry.UnknownBalancerError, ValueError)


def test_unexpected_params_are_rejected() -> None:
    with pytest.raises(TypeError):
        policies.make_balancer("round_robin", colour="blue")


def test_a_name_registers_once() -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register_balancer("least_loaded")(RoundRobin)
    assert isinstance(policies.make_balancer("least_loaded"), LeastLoaded)


def test_register_then_make(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_BALANCERS", dict(registry._BALANCERS))

    @registry.register_balancer("first_candidate")
    class FirstCandidate:
        def __init__(self, reverse: bool = False) -> None:
            self.reverse = reverse

        def rank(self, candidates, ctx):  # type: ignore[no-untyped-def]
            return list(reversed(candidates)) if self.reverse else list(candidates)

    made = registry.make_balancer("first_candidate", reverse=True)
    assert isinstance(made, FirstCandidate) and made.reverse
    assert "first_candidate" in registry.balancer_names()


@pytest.mark.parametrize("bad", ["", " padded "])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        registry.register_balancer(bad)


def test_no_module_branches_on_a_balancer_name() -> None:
    # A quoted balancer name may appear only in its own registration.
    for path in sorted((REPO / "policies").glob("*.py")):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for name in policies.balancer_names():
                if re.search(rf"[\"']{name}[\"']", line) and "register_balancer(" not in line:
                    pytest.fail(f"{path.name}:{lineno} names balancer {name!r} outside its registration")


def test_importing_policies_pulls_in_no_tensorflow_or_numpy() -> None:
    code = (
        "import sys, policies, policies.sticky, policies.split, policies.match\n"
        "banned = ('tensorflow', 'tensorflow_serving', 'numpy')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in banned)\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
