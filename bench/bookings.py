"""Bookings per second through a real booking API process.

`python -m bench.bookings [--clients 50] [--seconds 10] [--events 10]` starts a
private redis-server, a fresh database on the PostgreSQL at 127.0.0.1:5432 (or
`SEATCAST_BENCH_DATABASE_URL`) and `python -m booking_api`, then runs that many
concurrent HTTP clients booking one seat at a time for that long. It reports
bookings per second, latency percentiles, the API process's CPU seconds per
booking (from /proc/<pid>/stat) and how long the relay took to publish the
last committed booking to Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import uvloop

from shared.tokens import mint_token
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_until

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SECRET = "bench-secret-that-is-long-enough-for-hs256"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Results:
    latencies: list[float]
    statuses: dict[int, int]
    seconds: float


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process, from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def _sql(url: str, statement: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def fresh_database() -> Iterator[str]:
    admin = os.environ.get("SEATCAST_BENCH_DATABASE_URL", ADMIN_URL)
    name = f"seatcast_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_sql(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))
    finally:
        asyncio.run(_sql(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def api_process(database_url: str, redis_url: str, log_level: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "JWT_SECRET": SECRET,
        "PORT": str(port),
        "LOG_LEVEL": log_level,
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "booking_api"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(url, process), timeout=30, what="booking_api /readyz")
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(timeout=15)


def _ready(url: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"booking_api exited with {process.returncode}")
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class KeepAliveClient:
    """A minimal HTTP/1.1 client on one kept-alive connection.

    httpx spends a few milliseconds of CPU per request, more than the API
    itself; on two cores that would measure the load generator, not the API.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, url: str) -> KeepAliveClient:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer)

    async def post(self, path: str, body: bytes, headers: bytes) -> tuple[int, bytes]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
        ).encode()
        self._writer.write(head + headers + b"\r\n" + body)
        response_head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(response_head[9:12])
        length = 0
        for line in response_head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return status, await self._reader.readexactly(length)

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


async def client_loop(
    url: str, user_id: int, event_ids: list[int], deadline: float, results: Results
) -> None:
    headers = f"Authorization: Bearer {mint_token(SECRET, user_id)}\r\n".encode()
    client = await KeepAliveClient.open(url)
    try:
        n = user_id
        while time.monotonic() < deadline:
            n += 1
            body = b'{"eventId": %d, "seats": 1}' % event_ids[n % len(event_ids)]
            started = time.perf_counter()
            status, _ = await client.post("/api/bookings", body, headers)
            results.latencies.append(time.perf_counter() - started)
            results.statuses[status] = results.statuses.get(status, 0) + 1
    finally:
        await client.close()


async def run_load(
    url: str, clients: int, seconds: float, events: int
) -> tuple[Results, list[int]]:
    admin = {"Authorization": f"Bearer {mint_token(SECRET, 1, admin=True)}"}
    async with httpx.AsyncClient(base_url=url, headers=admin) as client:
        event_ids = []
        for n in range(events):
            response = await client.post(
                "/api/events", json={"name": f"bench {n}", "capacity": 1_000_000}
            )
            event_ids.append(response.json()["id"])
    results = Results([], {}, seconds)
    deadline = time.monotonic() + seconds
    await asyncio.gather(
        *(client_loop(url, 1000 + c, event_ids, deadline, results) for c in range(clients))
    )
    return results, event_ids


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=1000)[int(share * 1000) - 1] if len(values) > 1 else 0.0


def publish_lag(database_url: str) -> float:
    """Seconds until the outbox is empty: the relay has published everything."""
    started = time.monotonic()

    async def backlog() -> int:
        connection = await asyncpg.connect(database_url)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM outbox"))
        finally:
            await connection.close()

    wait_until(lambda: asyncio.run(backlog()) == 0, timeout=120, what="an empty outbox")
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bookings", description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--events", type=int, default=10, help="events the bookings spread over")
    parser.add_argument("--log-level", default="info", help="the API's LOG_LEVEL")
    args = parser.parse_args(argv)

    redis_server = RedisServer()
    redis_server.start()
    try:
        with (
            fresh_database() as database_url,
            api_process(database_url, redis_server.url, args.log_level) as (url, pid),
        ):
            print(f"booking_api pid {pid} at {url}", file=sys.stderr, flush=True)
            cpu_before, own_before, busy_before = cpu_seconds(pid), own_cpu(), machine_busy()
            results, _ = uvloop.run(run_load(url, args.clients, args.seconds, args.events))
            cpu = cpu_seconds(pid) - cpu_before
            own = own_cpu() - own_before
            busy = machine_busy() - busy_before
            lag = publish_lag(database_url)
    finally:
        redis_server.close()
    report(args, results, cpu, lag)
    print(
        f"  load generator {own:.2f} s CPU; the whole machine was busy "
        f"{busy:.1f} of {os.cpu_count()} cores x {args.seconds:g} s"
    )


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy() -> float:
    """CPU seconds every core spent on anything but idling, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICKS


def report(args: argparse.Namespace, results: Results, cpu: float, lag: float) -> None:
    booked = results.statuses.get(201, 0)
    latencies_ms = [1000 * s for s in results.latencies]
    print(
        f"booking API: {args.clients} clients, {args.seconds:g} s, {args.events} events, "
        f"LOG_LEVEL={args.log_level}"
    )
    print(f"  bookings      {booked} ({booked / results.seconds:.0f}/s)")
    print(f"  statuses      {dict(sorted(results.statuses.items()))}")
    print(
        f"  latency ms    p50 {percentile(latencies_ms, 0.50):.1f}  "
        f"p95 {percentile(latencies_ms, 0.95):.1f}  p99 {percentile(latencies_ms, 0.99):.1f}"
    )
    per_booking = 1000 * cpu / booked if booked else float("nan")
    print(f"  API CPU       {cpu:.2f} s ({per_booking:.2f} ms per booking)")
    print(f"  outbox empty  {lag:.2f} s after the load stopped")


if __name__ == "__main__":
    main()
