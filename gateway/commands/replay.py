"""`infergate replay LOG --target URL [--grpc HOST:PORT] [--rate N] [--compare]
[--max-disagreement F] [--max-latency-ratio F] [--json OUT]`: send the calls of a payload log
again, to a candidate (a new model version, a new gateway build), and compare.

LOG is the payload log's live file; its gzipped rotations beside it (LOG.N.gz) are read first,
oldest first; a rotation named directly is read alone. REST calls go to --target (the same
method, path, headers and body), gRPC calls to --grpc (the same method path, metadata and
message); a record whose request was cut at `max_bytes` is skipped, and so is a protocol
without a target.

With --compare (implied by --max-disagreement) every call the log shows answered OK is an
agreement sample: the candidate's answer agrees when it is OK and its predictions are within
tolerance of the logged ones (gateway.rollout.compare, the canary check's rule). Status changes
are counted either way, and the latency ratio is the candidate's median over the logged one
(the gateway-side latency the log recorded).

What must always hold: at most --rate calls start per second and at most --concurrency are in
flight; the exit code is 0 when every given limit holds, 1 when one does not, 2 when nothing
could be replayed; the JSON report (--json) says the same as the table.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson

from gateway.commands.replay_report import Outcome, print_table, summarize
from gateway.core.tasks import spawn
from gateway.observe.logfile import read_log
from gateway.observe.records import body_of
from gateway.rollout.compare import compare_predictions


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infergate replay", description=__doc__.splitlines()[0])
    p.add_argument("log", type=Path, help="the payload log (its rotations LOG.N.gz are read too)")
    p.add_argument("--target", help="base URL for REST calls, e.g. http://candidate:8501")
    p.add_argument("--grpc", help="HOST:PORT for gRPC calls")
    p.add_argument("--rate", type=float, default=50.0, help="calls started per second (50)")
    p.add_argument("--concurrency", type=int, default=8, help="calls in flight at most (8)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call (30)")
    p.add_argument("--limit", type=int, default=0, help="replay at most this many records")
    p.add_argument("--compare", action="store_true", help="compare answers with the logged ones")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (1e-3)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (1e-5)")
    p.add_argument("--max-disagreement", type=float, default=None,
                   help="fail when more than this share (0..1) of compared answers disagree")
    p.add_argument("--max-latency-ratio", type=float, default=None,
                   help="fail when replayed median latency / logged median exceeds this")
    p.add_argument("--json", type=Path, default=None, help="write the report here")
    p.add_argument("--no-progress", action="store_true")
    return p


def _ok(protocol: str, status: int) -> bool:
    return status == 0 if protocol == "grpc" else 200 <= status < 300


class Replayer:
    """Sends records to the candidate; one Outcome per record."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.compare = bool(args.compare or args.max_disagreement is not None)
        self._session: aiohttp.ClientSession | None = None
        self._channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> Replayer:
        if self.args.target:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, skip_auto_headers=("User-Agent", "Content-Type"))
        if self.args.grpc:
            self._channel = grpc.aio.insecure_channel(self.args.grpc, options=[
                ("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self._channel is not None:
            await self._channel.close()

    def skip_reason(self, rec: dict[str, Any]) -> str | None:
        request = rec.get("request")
        if not isinstance(request, dict) or not isinstance(rec.get("answer"), dict):
            return "malformed"
        if request.get("truncated"):
            return "truncated"
        if rec.get("protocol") == "grpc":
            return None if self._channel is not None else "no --grpc"
        return None if self._session is not None else "no --target"

    async def send(self, line: int, rec: dict[str, Any]) -> Outcome:
        protocol = str(rec["protocol"])
        req, logged = rec["request"], rec["answer"]
        body = body_of(req)
        t0 = time.perf_counter()
        try:
            if protocol == "grpc":
                status, answer = await self._grpc(req, body)
            else:
                status, answer = await self._rest(req, body)
            error = None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            status, answer, error = -1, b"", type(exc).__name__
        ms = (time.perf_counter() - t0) * 1000.0
        out = Outcome(line, protocol, str(rec.get("model")), int(rec.get("status", -1)), status,
                      float(rec.get("latency_ms", 0.0)), ms, error=error)
        if self.compare and _ok(protocol, out.logged_status) and not logged.get("truncated"):
            out.agreed = _ok(protocol, status) and compare_predictions(
                body_of(logged), answer, protocol, self.args.rtol, self.args.atol,
                method=str(rec.get("method", "predict")))
            if not out.agreed:
                out.detail = {"logged": body_of(logged)[:300].decode("utf-8", "replace"),
                              "replayed": answer[:300].decode("utf-8", "replace")}
        return out

    async def _rest(self, req: dict[str, Any], body: bytes) -> tuple[int, bytes]:
        assert self._session is not None
        url = self.args.target.rstrip("/") + str(req.get("path", "/"))
        async with self._session.request(
                str(req.get("http_method", "POST")), url, data=body or None,
                headers=dict(req.get("headers") or {}),
                timeout=aiohttp.ClientTimeout(total=self.args.timeout)) as resp:
            return resp.status, await resp.read()

    async def _grpc(self, req: dict[str, Any], body: bytes) -> tuple[int, bytes]:
        assert self._channel is not None
        metadata = tuple((k, str(v)) for k, v in (req.get("metadata") or {}).items()
                         if not k.endswith("-bin"))
        rpc: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(
            str(req["path"]))
        try:
            reply: bytes = await rpc(body, timeout=self.args.timeout, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            return int(err.code().value[0]), b""
        return 0, reply


def _records(args: argparse.Namespace) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, rec in enumerate(read_log(args.log), 1):
        if args.limit and i > args.limit:
            return
        yield i, rec


def _progress(total: int, quiet: bool) -> tuple[AbstractContextManager[Any], Callable[[], None]]:
    """A progress bar: rich's when the `replay` extra is installed, else a plain one."""
    if quiet:
        return nullcontext(), lambda: None
    try:
        from rich.progress import Progress
    except ImportError:
        from gateway.commands.batch import Progress as Plain

        plain = Plain(total)
        return nullcontext(), lambda: plain.tick(True)
    bar = Progress(transient=False)
    task = bar.add_task("replaying", total=total)
    return bar, lambda: bar.advance(task)


async def replay(args: argparse.Namespace) -> tuple[list[Outcome], dict[str, int]]:
    """Send every record at the bounded rate; (outcomes, skipped by reason)."""
    records = list(_records(args))
    skipped: dict[str, int] = {}
    outcomes: list[Outcome] = []
    async with Replayer(args) as rp:
        todo = []
        for line, rec in records:
            reason = rp.skip_reason(rec)
            if reason is None:
                todo.append((line, rec))
            else:
                skipped[reason] = skipped.get(reason, 0) + 1
        limit = asyncio.Semaphore(max(1, args.concurrency))
        bar, tick = _progress(len(todo), args.no_progress or not todo)
        start = time.monotonic()
        interval = 1.0 / args.rate if args.rate > 0 else 0.0

        async def one(line: int, rec: dict[str, Any]) -> None:
            async with limit:
                outcomes.append(await rp.send(line, rec))
                tick()

        with bar:
            pending: set[asyncio.Task[None]] = set()
            for i, (line, rec) in enumerate(todo):
                wait = start + i * interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                while len(pending) >= max(1, args.concurrency):  # no task piles up behind
                    _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                pending.add(spawn(one(line, rec), f"replay-{line}"))
            if pending:
                await asyncio.gather(*pending)
    outcomes.sort(key=lambda o: o.line)
    return outcomes, skipped


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.target and not args.grpc:
        print("infergate replay: give --target URL (REST) and/or --grpc HOST:PORT", file=sys.stderr)
        return 2
    if not args.log.exists() and not args.log.name.endswith(".gz"):
        from gateway.observe.logfile import rotations

        if not rotations(args.log):
            print(f"infergate replay: {args.log}: no such payload log", file=sys.stderr)
            return 2
    outcomes, skipped = asyncio.run(replay(args))
    report = summarize(outcomes, skipped, args.max_disagreement, args.max_latency_ratio,
                       bool(args.compare or args.max_disagreement is not None))
    print_table(report)
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    if not outcomes:
        return 2
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
