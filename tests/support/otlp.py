"""A real OTLP trace receiver for tests: `python -m tests.support.otlp --out FILE` listens on
loopback for OTLP/HTTP (POST /v1/traces, protobuf, gzip or not) and OTLP/gRPC (TraceService
Export), and appends every span it receives to FILE as one JSON line:

    {"trace_id": hex, "span_id": hex, "parent_span_id": hex or "", "name": str,
     "kind": "SERVER" | "CLIENT" | ..., "service": str, "status": "OK" | "ERROR" | "UNSET",
     "attributes": {key: value}, "start_ns": int, "end_ns": int, "via": "http" | "grpc"}

Once listening it writes {"http": PORT, "grpc": PORT} to the --ports file. `OtlpReceiver`
starts it as a managed process and reads the spans back. Parsing uses opentelemetry-proto,
which comes with the OTLP exporters (the `tracing` extra).
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return None if kind is None else getattr(v, kind)


def spans_of(request: Any, via: str) -> list[dict[str, Any]]:
    out = []
    for rs in request.resource_spans:
        resource = {a.key: _value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(), "name": s.name,
                    "kind": KINDS.get(s.kind, str(s.kind)),
                    "service": resource.get("service.name", ""),
                    "status": STATUS.get(s.status.code, str(s.status.code)),
                    "attributes": {a.key: _value(a.value) for a in s.attributes},
                    "start_ns": s.start_time_unix_nano, "end_ns": s.end_time_unix_nano, "via": via,
                })
    return out


def serve(out: pathlib.Path, ports_file: pathlib.Path) -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    lock = threading.Lock()

    def record(request: Any, via: str) -> None:
        lines = "".join(json.dumps(s) + "\n" for s in spans_of(request, via))
        with lock, out.open("a") as f:
            f.write(lines)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            req = trace_service_pb2.ExportTraceServiceRequest()
            req.ParseFromString(body)
            record(req, "http")
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            return

    class Service(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
        def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - gRPC's name
            record(request, "grpc")
            return trace_service_pb2.ExportTraceServiceResponse()

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    tmp = ports_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"http": http.server_address[1], "grpc": grpc_port}))
    tmp.replace(ports_file)
    try:
        http.serve_forever()
    finally:
        server.stop(0)


class OtlpReceiver:
    """The receiver as a managed process; `spans()` reads what it has recorded so far."""

    def __init__(self, workdir: pathlib.Path) -> None:
        import sys

        from tests.support.procs import REPO_ROOT, ManagedProcess

        workdir.mkdir(parents=True, exist_ok=True)
        self.out = workdir / "spans.jsonl"
        ports = workdir / "ports.json"
        self.proc = ManagedProcess(
            [sys.executable, "-m", "tests.support.otlp", "--out", str(self.out), "--ports",
             str(ports)], name="otlp-receiver", cwd=REPO_ROOT, env={"PYTHONPATH": str(REPO_ROOT)})
        self.proc.wait_until(ports.exists, timeout=30.0, what="listening")
        info = json.loads(ports.read_text())
        self.http_port, self.grpc_port = int(info["http"]), int(info["grpc"])

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def spans(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
        """The spans once `predicate(spans)` holds (the exporter sends in batches)."""
        end = time.monotonic() + timeout
        while True:
            spans = self.spans()
            if predicate(spans):
                return spans
            if time.monotonic() > end:
                raise AssertionError(f"spans never matched; got {len(spans)}:\n"
                                     + "\n".join(json.dumps(s) for s in spans[-20:]))
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.stop()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=pathlib.Path, required=True)
    p.add_argument("--ports", type=pathlib.Path, required=True)
    a = p.parse_args()
    serve(a.out, a.ports)


if __name__ == "__main__":
    main()
