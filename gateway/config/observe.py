"""Configuration of what the gateway tells about its calls: `tracing` (OpenTelemetry spans sent
to an OTLP receiver) and `payload_log` (sampled calls with their bodies, one JSON line each).

What must always hold: both are optional and off by default; a config that names them is valid
whether or not the `tracing` extra is installed (the gateway says so when it starts); header
names are lower-case, as `Call.headers` holds them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from gateway.config.base import Frozen

# Credentials a client sends: never written to a payload log unless the config says otherwise.
DEFAULT_REDACT = ("authorization", "cookie", "x-api-key")


class Tracing(Frozen):
    """`otlp_endpoint` is the receiver's base URL, as OTEL_EXPORTER_OTLP_ENDPOINT: over HTTP the
    spans go to {otlp_endpoint}/v1/traces, over gRPC to its TraceService (an http:// endpoint
    is plaintext, https:// TLS)."""

    otlp_endpoint: str
    protocol: Literal["grpc", "http"] = "http"
    # Share of calls without a client trace that start one (a random draw per call); a client's
    # own traceparent decides for its calls (parent-based: its sampled flag).
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    headers: dict[str, str] = {}  # sent with every export (e.g. a tenant or an API key)
    service_name: str = "infergate"

    @field_validator("otlp_endpoint")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("expected a base URL such as http://otel-collector:4318")
        return v.rstrip("/")


class PayloadLog(Frozen):
    """Sampled calls, request and answer, as JSON lines in `path`; rotated (gzip) past
    `rotate_mb`, the newest `keep` rotations kept."""

    path: str
    sample_ratio: float = Field(default=0.01, ge=0.0, le=1.0)
    models: list[str] = []  # empty: every model
    max_bytes: int = Field(default=65536, ge=0)  # longer bodies are cut (and marked truncated)
    rotate_mb: float = Field(default=100.0, gt=0)
    keep: int = Field(default=10, ge=0)  # rotated files kept; 0: all
    queue: int = Field(default=10000, ge=1)  # records waiting for the writer; beyond: dropped
    redact: list[str] = list(DEFAULT_REDACT)  # headers (metadata) never written
    # Test knob: each write waits this long, as on a slow disk. Never set it in production.
    slow_write_ms: float = Field(default=0.0, ge=0.0)

    @field_validator("redact")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [h.strip().lower() for h in v]
