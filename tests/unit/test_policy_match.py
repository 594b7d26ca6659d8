"""Route rule matching: header matchers, method/protocol filters, first match wins."""

from __future__ import annotations

import pytest

from policies.match import HeaderMatch, RouteMatch, RuleChain


def test_exact() -> None:
    m = HeaderMatch("x-canary", exact="always")
    assert m.matches({"x-canary": "always"})
    assert not m.matches({"x-canary": "Always"})
    assert not m.matches({})


def test_regex_is_a_full_match_compiled_once() -> None:
    m = HeaderMatch("x-user-id", regex=r"[0-9]+")
    assert m.matches({"x-user-id": "12345"})
    assert not m.matches({"x-user-id": "12345x"})  # a search would accept this
    assert not m.matches({"x-user-id": "a12345"})
    assert not m.matches({})
    assert m._pattern is not None and m._pattern.pattern == r"[0-9]+"


def test_present_and_absent() -> None:
    assert HeaderMatch("x-debug", present=True).matches({"x-debug": ""})
    assert not HeaderMatch("x-debug", present=True).matches({})
    assert HeaderMatch("x-debug", present=False).matches({})
    assert not HeaderMatch("x-debug", present=False).matches({"x-debug": "1"})
    assert HeaderMatch("x-debug").matches({"x-debug": "1"})  # nothing given: presence
    assert not HeaderMatch("x-debug").matches({})


def test_header_name_is_lower_cased() -> None:
    m = HeaderMatch("X-Canary", exact="1")
    assert m.name == "x-canary"
    assert m.matches({"x-canary": "1"})


@pytest.mark.parametrize(
    "kwargs",
    [{"exact": "a", "regex": "a"}, {"exact": "a", "present": True}, {"regex": "a", "present": False}],
)
def test_one_condition_per_matcher(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="only one"):
        HeaderMatch("x", **kwargs)  # type: ignore[arg-type]


def test_bad_regex_and_empty_name_raise_value_error() -> None:
    with pytest.raises(ValueError, match="invalid regex"):
        HeaderMatch("x", regex="(")
    with pytest.raises(ValueError):
        HeaderMatch("")


def test_route_match_needs_every_header() -> None:
    rule = RouteMatch([HeaderMatch("x-a", exact="1"), HeaderMatch("x-b", regex="b+")])
    assert rule.matches({"x-a": "1", "x-b": "bbb"}, "predict", "rest")
    assert not rule.matches({"x-a": "1"}, "predict", "rest")
    assert not rule.matches({"x-a": "2", "x-b": "b"}, "predict", "rest")


def test_methods_and_protocols() -> None:
    rule = RouteMatch((), methods=frozenset({"predict"}), protocols=frozenset({"grpc"}))
    assert rule.matches({}, "predict", "grpc")
    assert not rule.matches({}, "classify", "grpc")
    assert not rule.matches({}, "predict", "rest")
    assert RouteMatch().matches({"anything": "x"}, "regress", "rest")


def test_rule_chain_first_match_wins() -> None:
    chain = RuleChain(
        [
            (RouteMatch([HeaderMatch("x-canary", exact="always")]), "canary-only"),
            (RouteMatch(protocols=frozenset({"grpc"})), "grpc-split"),
            (RouteMatch(), "default-split"),
        ]
    )
    assert chain.select({"x-canary": "always"}, "predict", "grpc") == "canary-only"
    assert chain.select({"x-canary": "never"}, "predict", "grpc") == "grpc-split"
    assert chain.select({}, "predict", "rest") == "default-split"


def test_rule_chain_without_a_match_is_none() -> None:
    chain: RuleChain[str] = RuleChain([(RouteMatch([HeaderMatch("x-canary")]), "canary")])
    assert chain.select({}, "predict", "rest") is None
    assert RuleChain[str]([]).select({}, "predict", "rest") is None


def test_matchers_are_hashable_values() -> None:
    assert HeaderMatch("X-A", regex="a+") == HeaderMatch("x-a", regex="a+")
    assert len({HeaderMatch("x-a", regex="a+"), HeaderMatch("x-a", regex="a+")}) == 1
    assert RouteMatch([HeaderMatch("x-a")]) == RouteMatch((HeaderMatch("x-a"),))
