"""What the gateway tells about its calls, beside its metrics: OpenTelemetry traces
(`tracing`) and a payload log of sampled calls (`payload`, `records`, `logfile`) that
`infergate replay` sends again to a candidate. `observer` is what an ingress wraps around a
call when either is on.

What must always hold: this package sits below routing and transport (both use it) and above
config and core; it imports no other gateway package; with neither feature configured none of
it is on a call's path.
"""

from gateway.observe.observer import CallObserver
from gateway.observe.payload import PayloadLog, log_path
from gateway.observe.tracing import Tracer, TracingUnavailable

__all__ = ["CallObserver", "PayloadLog", "Tracer", "TracingUnavailable", "log_path"]
