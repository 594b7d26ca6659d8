"""The `infergate` command: run | validate | demo | replica | make-test-models | agent |
rollout | batch | scale simulate.

Each subcommand imports what it needs when it runs, so `infergate run` never loads TensorFlow and
`infergate validate` starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path


def _passthrough(module: str, argv: list[str]) -> int:
    import importlib

    mod = importlib.import_module(module)
    rc: int = mod.main(argv)
    return rc


def cmd_validate(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_config

    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    pools = sorted({r.pool for r in cfg.replicas})
    print(f"{args.file}: ok: {len(cfg.replicas)} replicas in {len(pools)} pools "
          f"({', '.join(pools) or '-'}), {len(cfg.models)} models configured, "
          f"cache {cfg.cache.store}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.app.run import run_gateway
    from gateway.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"infergate: refusing to start: invalid config\n{exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.install()  # uvloop's event loop for every asyncio.run below
    except ImportError:
        pass
    folder: str | None = None

    def run_one(worker: int = 0) -> int:
        try:
            return asyncio.run(run_gateway(cfg, Path(args.config), worker, args.workers, folder))
        except OSError as exc:
            print(f"infergate: cannot start: {exc}", file=sys.stderr)
            return 2

    if args.workers <= 1:
        return run_one()
    from gateway.core.shared import shared_folder

    folder = str(shared_folder())  # made before the fork: every worker gets the same one
    try:
        return _run_workers(args.workers, run_one)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_workers(n: int, run_one: Callable[[int], int]) -> int:
    """`--workers N`: N forked processes sharing the listening ports (SO_REUSEPORT; the kernel
    spreads connections). Worker 0 also serves the admin API. SIGTERM, SIGINT and SIGHUP are
    passed on to every worker; the exit code is the first non-zero one."""
    pids: list[int] = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            os._exit(run_one(i))
        pids.append(pid)

    def forward(sig: int, _frame: object) -> None:
        for p in pids:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                continue

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    rc = 0
    for p in pids:
        _, status = os.waitpid(p, 0)
        rc = rc or os.waitstatus_to_exitcode(status)
    return rc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infergate", description=__doc__.splitlines()[0])
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="serve: gRPC 8500, REST 8501, admin 127.0.0.1:9901")
    run.add_argument("--config", required=True)
    run.add_argument("--workers", type=int, default=1,
                     help="processes sharing the ports (SO_REUSEPORT), one per core")
    run.set_defaults(fn=cmd_run)

    val = sub.add_parser("validate", help="check a config file")
    val.add_argument("file")
    val.set_defaults(fn=cmd_validate)

    for name, module, help_ in PASSTHROUGH:
        sp = sub.add_parser(name, help=help_, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
        sp.set_defaults(fn=None, module=module)
    return p


# Subcommands that own their arguments: everything after the name goes to their own parser.
PASSTHROUGH = [
    ("replica", "replica.server", "a TF-Serving-compatible replica for SavedModels on disk"),
    ("make-test-models", "replica.testmodels", "write the test SavedModels into DIR"),
    ("agent", "gateway.commands.agent", "serve this node's GPU (NVML) and CPU load as Prometheus text"),
    ("demo", "gateway.commands.demo", "local replicas, a gateway and sample traffic"),
    ("rollout", "gateway.commands.rollout", "status|pause|resume|promote|abort MODEL"),
    ("drain", "gateway.commands.drain", "REPLICA [--undrain] [--wait]: take a replica out of rotation"),
    ("batch", "gateway.commands.batch", "send a JSONL file of instances through the gateway"),
    ("scale", "gateway.commands.scale_simulate", "scale simulate --trace FILE"),
    ("replay", "gateway.commands.replay", "LOG --target URL: send a payload log again, compare"),
]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    level = "INFO"
    if len(argv) >= 2 and argv[0] == "--log-level":
        level, argv = argv[1], argv[2:]
    modules = {name: module for name, module, _ in PASSTHROUGH}
    if argv and argv[0] in modules:
        logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return _passthrough(modules[argv[0]], argv[1:])
    if level != "INFO":
        argv = ["--log-level", level, *argv]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.fn is None:
        return _passthrough(args.module, list(args.rest) + extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    rc: int = args.fn(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
