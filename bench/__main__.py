"""`python -m bench`: the fan-out benchmark (`make bench`, `make bench-quick`).

Starts a private redis-server, then for each run and each server variant a
fresh server process and a load client, runs every scenario (see
`bench.scenarios`) and writes `bench/results/<time>/results.{json,md}` and
`plot.png`, copied to `bench/results/latest.*`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import secrets
import signal
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop
from redis.asyncio import Redis

from bench import report
from bench.limits import raise_open_files
from bench.publisher import Feed
from bench.scenarios import (
    DELIVERY_SCENARIOS,
    FULL,
    QUICK,
    SCENARIOS,
    Bench,
    Result,
    run_server,
)
from bench.servers import DEFAULT_SERVERS, Backend, ServerSpec, parse_servers
from shared.publisher import Publisher
from tests.support.redis_server import RedisServer

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="small sizes and one run: under a minute")
    add(
        "--servers",
        default=DEFAULT_SERVERS,
        help=(
            "comma-separated: floor, gateway[:<WORKERS>[:<SOCKET_TRANSPORT>]] "
            f"(default {DEFAULT_SERVERS})"
        ),
    )
    add("--runs", type=int, help="runs of every server (default 2, quick 1)")
    add("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    add(
        "--profile",
        action="store_true",
        help="run each gateway under py-spy; folded stacks in <results>/profiles "
        "(its CPU figures then include the profiler's)",
    )
    add(
        "--only",
        help="comma-separated scenarios to run: connect, idle, burst (these three go together), "
        "paced, routing (default all)",
    )
    add("--log-level", default="warning", help="LOG_LEVEL of the gateway (default warning)")
    args = parser.parse_args(argv)
    try:
        args.specs = parse_servers(args.servers)
    except ValueError as error:
        parser.error(str(error))
    args.only = _scenario_names(parser, args.only)
    if args.runs is None:
        args.runs = 1 if args.quick else 2
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def _scenario_names(parser: argparse.ArgumentParser, text: str | None) -> frozenset[str] | None:
    if text is None:
        return None
    names = frozenset(name.strip() for name in text.split(",") if name.strip())
    known = {name for names, _ in SCENARIOS for name in names}
    if not names or not names <= known:
        parser.error(f"--only takes some of {', '.join(sorted(known))}, not {text!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.argv = sys.argv[1:] if argv is None else argv
    open_files = raise_open_files()
    started = datetime.now(UTC)
    directory = args.out / started.strftime("%Y%m%d-%H%M%S")
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    args.profile_dir = directory / "profiles" if args.profile else None
    if args.profile_dir is not None:
        args.profile_dir.mkdir()
    meta = _meta(args, started, open_files)
    redis_server = RedisServer()
    redis_server.start()
    try:
        runs = uvloop.run(_run_all(args, redis_server.url, directory / "logs"))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: every server and client it started is stopped", file=sys.stderr)
        return 130
    finally:
        redis_server.close()
    meta["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    names = [spec.name for spec in args.specs]
    document = {"meta": meta, "summary": report.summarize(runs, names), "runs": runs}
    paths = report.write(directory, document)
    print(report.markdown(document))
    print("wrote " + ", ".join(str(path) for path in paths))
    return 0


async def _run_all(args: argparse.Namespace, redis_url: str, log_dir: Path) -> list[dict[str, Any]]:
    redis = Redis.from_url(redis_url)
    bench = Bench(
        backend=Backend(
            redis_url, secrets.token_urlsafe(32), args.log_level, profile_dir=args.profile_dir
        ),
        redis=redis,
        feed=Feed(Publisher(redis)),
        sizes=QUICK if args.quick else FULL,
        log_dir=log_dir,
        event_ids=itertools.count(1),
        only=args.only,
    )
    runs: list[dict[str, Any]] = []
    # SIGTERM cancels the run, so every server and client it started is stopped.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        for run in range(1, args.runs + 1):
            for spec in args.specs:
                began = time.monotonic()
                results = await run_server(bench, spec, run)
                runs.append({"run": run, "server": spec.name, "results": results})
                _progress(run, args.runs, spec, results, time.monotonic() - began)
    finally:
        await redis.aclose()
    return runs


def _progress(
    run: int, runs: int, spec: ServerSpec, results: dict[str, Result], seconds: float
) -> None:
    parts = []
    for name in DELIVERY_SCENARIOS:
        result = results.get(name, {})
        if "cpuUsPerDelivery" in result:
            cpu, p99 = result["cpuUsPerDelivery"], result["latencyMs"]["p99"]
            parts.append(f"{name} {cpu:.1f} µs p99 {p99} ms lost {result['lost']}")
    if "connectsPerSecond" in results.get("connect", {}):
        parts.append(f"{results['connect']['connectsPerSecond']:,.0f} connects/s")
    if "kibPerConnection" in results.get("idle", {}):
        parts.append(f"idle {results['idle']['kibPerConnection']:.1f} KiB")
    errors = [f"{name}: {result['error']}" for name, result in results.items() if "error" in result]
    line = " | ".join(parts + errors)
    print(f"[run {run}/{runs}, {seconds:.0f} s] {spec.name}: {line}", flush=True)


def _meta(args: argparse.Namespace, started: datetime, open_files: int) -> dict[str, Any]:
    return {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *args.argv]),
        "profiled": args.profile,
        "only": sorted(args.only) if args.only is not None else None,
        "mode": "quick" if args.quick else "full",
        "runs": args.runs,
        "servers": [spec.name for spec in args.specs],
        "sizes": asdict(QUICK if args.quick else FULL),
        "openFilesLimit": open_files,
        "machine": {
            "cpus": os.cpu_count(),
            "cpuModel": _cpu_model(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
