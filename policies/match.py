"""Route rules: which rule of a model's chain a call matches (Envoy-style header matchers).

Pure functions of (headers, method, protocol); the ingress has already lower-cased header names,
so a ``headers`` mapping given to ``matches``/``select`` must have lower-case keys. A rule matches
when all of its header matchers match and its method and protocol sets (when given) contain the
call's. A ``RuleChain`` returns the value of the first rule that matches (config order), or None.

What must always hold:
- a ``HeaderMatch`` tests exactly one thing: ``exact`` value, ``regex`` full match, or ``present``
  (True: the header exists, False: it does not); giving none means ``present=True``;
- regexes are compiled once, at construction, and invalid ones raise ``ValueError`` there;
- matching never mutates its inputs and never raises for any header content.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """One header condition; ``name`` is matched case-insensitively (stored lower-case)."""

    name: str
    exact: str | None = None
    regex: str | None = None
    present: bool | None = None
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a header match needs a header name")
        given = sum(x is not None for x in (self.exact, self.regex, self.present))
        if given > 1:
            raise ValueError(f"header match on {self.name!r}: give only one of exact, regex, present")
        object.__setattr__(self, "name", self.name.lower())
        if self.regex is not None:
            try:
                pattern = re.compile(self.regex)
            except re.error as err:
                raise ValueError(
                    f"header match on {self.name!r}: invalid regex {self.regex!r}: {err}"
                ) from err
            object.__setattr__(self, "_pattern", pattern)

    def matches(self, headers: Mapping[str, str]) -> bool:
        value = headers.get(self.name)
        if self.present is False:
            return value is None
        if value is None:
            return False
        if self.exact is not None:
            return value == self.exact
        if self._pattern is not None:
            return self._pattern.fullmatch(value) is not None
        return True


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """All conditions of one rule; an empty rule (no headers, methods or protocols) matches every call.

    ``methods`` and ``protocols`` are compared exactly (e.g. ``{"predict"}``, ``{"grpc", "rest"}``);
    None means any.
    """

    headers: Sequence[HeaderMatch] = ()
    methods: frozenset[str] | None = None
    protocols: frozenset[str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", tuple(self.headers))

    def matches(self, headers: Mapping[str, str], method: str, protocol: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.protocols is not None and protocol not in self.protocols:
            return False
        for header in self.headers:
            if not header.matches(headers):
                return False
        return True


class RuleChain(Generic[V]):
    """Ordered rules; ``select`` returns the value of the first rule that matches."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Sequence[tuple[RouteMatch, V]]) -> None:
        self._rules: tuple[tuple[RouteMatch, V], ...] = tuple(rules)

    @property
    def rules(self) -> tuple[tuple[RouteMatch, V], ...]:
        return self._rules

    def select(self, headers: Mapping[str, str], method: str, protocol: str) -> V | None:
        for rule, value in self._rules:
            if rule.matches(headers, method, protocol):
                return value
        return None
