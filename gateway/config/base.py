"""What every config model shares: frozen, unknown keys refused, and the error type.

What must always hold: a config object is never mutated after validation.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file, key path and reason."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def check_hostport(v: str) -> str:
    host, sep, port = v.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {v!r}")
    return v
