"""Loading a config file: YAML text in, a `GatewayConfig` out, or a `ConfigError` that names
file, key path and reason ("FILE: key.path: reason"), one line per problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.base import ConfigError
from gateway.config.schema import GatewayConfig


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def parse_config(data: Any, source: str = "<config>") -> GatewayConfig:
    """Validate already-parsed YAML data."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level): expected a mapping, got {type(data).__name__}")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            loc = _loc(err["loc"])
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            # Cross-reference errors (raised for the whole file) already name their key path.
            lines.append(f"{source}: {loc}: {msg}" if err["loc"] else f"{source}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a YAML config file. Raises ConfigError naming file, key path, reason."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(parse)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}: {where}: invalid YAML: {problem}") from None
    return parse_config(data, str(p))


def json_schema() -> dict[str, Any]:
    return GatewayConfig.model_json_schema()
