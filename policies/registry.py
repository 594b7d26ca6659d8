"""Balancers by name: the one place a configured name (`balance: least_loaded`) becomes an object.

Each balancer module registers its class with ``@register_balancer("name")``; importing the
``policies`` package imports every module, so the table is complete once ``import policies`` returns.
Nothing anywhere branches on a balancer's name: the gateway calls ``make_balancer(name, **params)``.

What must always hold:
- the table is written only by the decorators, at import time; a name is registered once (a second
  registration of the same name is a programming error and raises);
- an unknown name raises ``UnknownBalancerError`` naming the known ones, so config validation can
  report it before anything is swapped in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from policies.base import Balancer

B = TypeVar("B", bound=Balancer)

# Import-time table of balancer factories, like a plugin entry-point list: filled by the decorators
# below when their modules are imported, read-only afterwards. It holds classes, never state.
_BALANCERS: dict[str, Callable[..., Balancer]] = {}


class UnknownBalancerError(ValueError):
    """A configured balancer name that no module registered."""


def register_balancer(name: str) -> Callable[[type[B]], type[B]]:
    """Class decorator: make ``make_balancer(name, **params)`` construct ``cls(**params)``."""
    if not name or name != name.strip():
        raise ValueError(f"balancer name must be a non-empty trimmed string, got {name!r}")

    def decorate(cls: type[B]) -> type[B]:
        if name in _BALANCERS:
            raise ValueError(f"balancer {name!r} is already registered by {_BALANCERS[name]!r}")
        _BALANCERS[name] = cls
        return cls

    return decorate


def make_balancer(name: str, **params: Any) -> Balancer:
    """A new balancer instance (balancers may keep per-instance state, e.g. round-robin position)."""
    try:
        factory = _BALANCERS[name]
    except KeyError:
        known = ", ".join(balancer_names()) or "(none registered; was `policies` imported?)"
        raise UnknownBalancerError(f"unknown balancer {name!r}; known: {known}") from None
    return factory(**params)


def balancer_names() -> list[str]:
    """Registered names, sorted, for config validation and error messages."""
    return sorted(_BALANCERS)
