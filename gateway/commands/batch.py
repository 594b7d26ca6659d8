"""`infergate batch`: send a JSONL file of instances through the gateway on spare capacity.

Each input line is one instance (any JSON value TF Serving accepts as an element of
"instances"), or a whole request object ({"instances": [...]} / {"inputs": ...}). Every line is
sent as its own predict call marked `x-priority: sheddable`, so the gateway sheds it before any
real-time call; a 429/503 makes the sender back off and retry. Answers go to a JSONL file in
input order, and, when the model has a cache configured, into the gateway's cache store, so later
real-time requests for the same inputs are hits.

What must always hold: concurrency never exceeds --concurrency; a line that fails after its
retries is written with its error and counted, never dropped silently.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

RETRY_STATUSES = frozenset({429, 503})


def _body(line: str) -> bytes:
    value = json.loads(line)
    if isinstance(value, dict) and ("instances" in value or "inputs" in value):
        return json.dumps(value).encode()
    return json.dumps({"instances": [value]}).encode()


class Progress:
    def __init__(self, total: int, stream: Any = sys.stderr) -> None:
        self.total, self.done, self.failed, self.stream = total, 0, 0, stream
        self.t0 = time.monotonic()
        self._last = 0.0

    def tick(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        now = time.monotonic()
        if now - self._last > 0.2 or self.done == self.total:
            self._last = now
            width = 30
            filled = int(width * self.done / max(1, self.total))
            rate = self.done / max(1e-9, now - self.t0)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
                              f"  {rate:.0f}/s  failed {self.failed}")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()


async def run_batch(url: str, lines: list[str], concurrency: int, retries: int,
                    headers: dict[str, str]) -> tuple[list[dict[str, Any]], Progress]:
    progress = Progress(len(lines))
    results: list[dict[str, Any]] = [{} for _ in lines]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(lines)):
        queue.put_nowait(i)
    backoff = [0.0]

    async def worker(session: aiohttp.ClientSession) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                body = _body(lines[i])
            except json.JSONDecodeError as exc:
                results[i] = {"line": i + 1, "error": f"invalid JSON: {exc.msg}"}
                progress.tick(False)
                continue
            delay = 0.05
            for attempt in range(retries + 1):
                if backoff[0] > time.monotonic():
                    await asyncio.sleep(backoff[0] - time.monotonic())
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        raw = await resp.read()
                        status = resp.status
                        cache = resp.headers.get("x-infergate-cache", "")
                except (TimeoutError, aiohttp.ClientError) as exc:
                    status, raw, cache = 0, json.dumps({"error": str(exc)}).encode(), ""
                if status in RETRY_STATUSES or status == 0:
                    if attempt < retries:
                        # The fleet is busy: every worker pauses, so the batch yields to real traffic.
                        backoff[0] = max(backoff[0], time.monotonic() + delay)
                        delay = min(delay * 2, 5.0)
                        continue
                break
            try:
                answer = json.loads(raw)
            except ValueError:
                answer = {"error": raw.decode(errors="replace")[:500]}
            ok = status == 200
            results[i] = {"line": i + 1, "status": status, "cache": cache,
                          **(answer if isinstance(answer, dict) else {"answer": answer})}
            progress.tick(ok)

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(max(1, concurrency))))
    return results, progress


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="infergate batch", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True, help="JSONL file: one instance (or request) a line")
    ap.add_argument("--output", default=None, help="JSONL answers (default: INPUT.out.jsonl)")
    ap.add_argument("--gateway", default="http://127.0.0.1:8501", help="the gateway's REST URL")
    ap.add_argument("--version", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--retries", type=int, default=8)
    args = ap.parse_args(argv)
    src = Path(args.input)
    try:
        lines = [ln for ln in src.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as exc:
        print(f"infergate batch: cannot read {src}: {exc.strerror}", file=sys.stderr)
        return 2
    path = f"/v1/models/{args.model}"
    if args.version is not None:
        path += f"/versions/{args.version}"
    url = args.gateway.rstrip("/") + path + ":predict"
    headers = {"Content-Type": "application/json", "x-priority": "sheddable"}
    results, progress = asyncio.run(run_batch(url, lines, args.concurrency, args.retries, headers))
    out = Path(args.output) if args.output else src.with_suffix(".out.jsonl")
    with out.open("w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    hits = sum(1 for r in results if r.get("cache") == "hit")
    print(f"{len(results)} instances, {progress.failed} failed, {hits} already cached; "
          f"answers in {out}")
    return 0 if progress.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
