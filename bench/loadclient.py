"""The load client: thousands of WebSocket watchers (`bench.watcher`) in one cheap process.

The runner drives it with one JSON object per line on stdin and reads one JSON
reply per line on stdout (logs go to stderr):

- `{"cmd": "connect", "url": "ws://…", "secret": "…", "events": [ids],
  "perEvent": k, "concurrency": c, "timeout": s}` opens `k` watchers of each
  event (`/ws/events/{id}?token=<jwt>`) and replies once every one got its
  `subscribed` (or failed): connects per second and this process's CPU;
- `{"cmd": "arm", "expected": m}` starts a measurement: every watcher is to
  receive seqs 1..m;
- `{"cmd": "collect", "quiet": s, "deadline": s, "serverPids": [pids]}` waits
  until every watcher has m messages (or, for `quiet` seconds, nothing arrived
  and the server sat idle; or `deadline` passed) and replies with losses,
  duplicates, order, latency percentiles and CPU;
- `{"cmd": "close"}` closes every watcher; `{"cmd": "quit"}` (or EOF) exits.

Latency is receipt wall time minus the message's `timestamp`, which the
benchmark's publisher sets with microseconds just before it publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import uvloop
from orjson import dumps, loads

from bench.delivery import check_all, latency_summary
from bench.limits import raise_open_files
from bench.procstat import CpuSample, cpu_of_process, own_cpu
from bench.watcher import Watcher, Window
from bench.wsclient import upgrade_request
from shared.tokens import mint_token

# A ramp stops after this many failed handshakes (or a tenth, or a round in flight).
MIN_FAILURES_TO_GIVE_UP = 10
POLL_SECONDS = 0.1
# A server using more than this share of a core is still working on the deliveries.
BUSY_SHARE = 0.05


class Ramp:
    """Connects in flight at once, and when to stop trying against a failing server."""

    def __init__(self, concurrency: int, give_up_after: int) -> None:
        self.gate = asyncio.Semaphore(concurrency)
        self.give_up_after = give_up_after
        # Handshakes that failed so far in this ramp.
        self.failed = 0


class Fleet:
    """Every open watcher, and the measurement window they share."""

    def __init__(self) -> None:
        self.window = Window()
        # Watchers that got `subscribed`; failed ones are closed and dropped.
        self.watchers: list[Watcher] = []
        # Close codes the server sent since the last `arm` (or connect).
        self.closes: Counter[str] = Counter()
        self._expected = 0
        self._armed_cpu = own_cpu()
        self._armed_at = time.perf_counter()

    async def connect(
        self,
        url: str,
        secret: str,
        events: list[int],
        per_event: int,
        concurrency: int,
        timeout: float,
    ) -> dict[str, Any]:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        targets = [event for event in events for _ in range(per_event)]
        first_user = len(self.watchers) + 1
        tokens = [mint_token(secret, first_user + index) for index in range(len(targets))]
        # A server that fails a tenth of the handshakes, or a full round in flight, is done.
        give_up_after = min(concurrency, max(MIN_FAILURES_TO_GIVE_UP, len(targets) // 10))
        ramp = Ramp(concurrency, give_up_after)
        self.closes.clear()
        started_cpu, started_at = own_cpu(), time.perf_counter()
        outcomes = await asyncio.gather(
            *(
                self._open(
                    host,
                    port,
                    upgrade_request(host, port, f"/ws/events/{event}?token={token}"),
                    ramp,
                    timeout,
                )
                for event, token in zip(targets, tokens, strict=True)
            ),
            return_exceptions=True,
        )
        seconds = time.perf_counter() - started_at
        cpu = own_cpu() - started_cpu
        failures = Counter(_failure(outcome) for outcome in outcomes if outcome is not None)
        connected = len(targets) - sum(failures.values())
        return {
            "connected": connected,
            "failed": sum(failures.values()),
            "failures": dict(failures.most_common(5)),
            "closes": dict(self.closes),
            "seconds": seconds,
            "connectsPerSecond": connected / seconds if seconds > 0 else None,
            "clientCpuSeconds": cpu.total_seconds,
        }

    async def _open(self, host: str, port: int, request: bytes, ramp: Ramp, timeout: float) -> None:
        async with ramp.gate:
            if ramp.failed >= ramp.give_up_after:
                raise ConnectionAbortedError(f"not tried: {ramp.failed} connects failed already")
            try:
                self.watchers.append(await self._handshake(host, port, request, timeout))
            except (OSError, TimeoutError):
                ramp.failed += 1
                raise

    async def _handshake(self, host: str, port: int, request: bytes, timeout: float) -> Watcher:
        """Connect, upgrade, and wait for `subscribed`; the watcher is closed on failure."""
        watcher = Watcher(request, self.window, self.closes)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.create_connection(lambda: watcher, host, port), timeout)
        try:
            subscribed = await asyncio.wait_for(asyncio.shield(watcher.ready), timeout)
        except TimeoutError:
            watcher.abort("no `subscribed` in time")
            raise
        if not subscribed:
            closes = dict(self.closes)
            raise ConnectionError(watcher.failure or f"closed before subscribed {closes}")
        return watcher

    def arm(self, expected: int) -> dict[str, Any]:
        self._expected = expected
        for watcher in self.watchers:
            watcher.seqs.clear()
            watcher.errors.clear()
        self.closes.clear()
        self.window.reset(expected * len(self.watchers))
        self._armed_cpu, self._armed_at = own_cpu(), time.perf_counter()
        return {"watchers": len(self.watchers), "target": self.window.target}

    async def collect(
        self, quiet: float, deadline: float, server_pids: list[int]
    ) -> dict[str, Any]:
        await self._wait_complete(quiet, deadline, server_pids)
        cpu: CpuSample = own_cpu() - self._armed_cpu
        seconds = time.perf_counter() - self._armed_at
        check = check_all((watcher.seqs for watcher in self.watchers), self._expected)
        errors: Counter[str] = Counter()
        for watcher in self.watchers:
            errors.update(watcher.errors)
        return {
            "watchers": len(self.watchers),
            "expected": self.window.target,
            "delivered": check.received,
            "lost": check.lost,
            "duplicates": check.duplicates,
            "outOfOrder": check.out_of_order,
            "unexpected": check.unexpected,
            "completeWatchers": check.complete,
            "closes": dict(self.closes),
            "errors": dict(errors),
            "latencyMs": latency_summary(self.window.latencies),
            "seconds": seconds,
            "clientCpuSeconds": cpu.total_seconds,
        }

    async def _wait_complete(self, quiet: float, deadline: float, server_pids: list[int]) -> None:
        """Until every delivery arrived, or `deadline` passed, or for `quiet` seconds
        nothing arrived while the server sat idle: a busy server is still delivering."""
        window = self.window
        now = time.monotonic()
        give_up, last_change = now + deadline, now
        last_count, last_cpu = window.arrived, _cpu_seconds(server_pids)
        while not window.complete.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(window.complete.wait(), POLL_SECONDS)
            now, cpu = time.monotonic(), _cpu_seconds(server_pids)
            if window.arrived != last_count or cpu - last_cpu > BUSY_SHARE * POLL_SECONDS:
                last_change = now
            last_count, last_cpu = window.arrived, cpu
            if now - last_change > quiet or now > give_up:
                return

    async def close(self, timeout: float) -> dict[str, Any]:
        watchers, self.watchers = self.watchers, []
        for watcher in watchers:
            watcher.close()
        if watchers:
            await asyncio.wait_for(asyncio.gather(*(w.closed for w in watchers)), timeout)
        return {"closed": len(watchers)}


def _cpu_seconds(pids: list[int]) -> float:
    """CPU used so far by these processes; those that are gone count nothing."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            total += cpu_of_process(pid).total_seconds
    return total


def _failure(outcome: BaseException | None) -> str:
    text = f"{type(outcome).__name__}: {outcome}"
    return text[:200]


async def dispatch(fleet: Fleet, request: dict[str, Any]) -> dict[str, Any]:
    """Run one command of the runner."""
    match request.get("cmd"):
        case "connect":
            return await fleet.connect(
                request["url"],
                request["secret"],
                request["events"],
                request["perEvent"],
                request.get("concurrency", 128),
                request.get("timeout", 30.0),
            )
        case "arm":
            return fleet.arm(request["expected"])
        case "collect":
            quiet, deadline = request.get("quiet", 5.0), request.get("deadline", 300.0)
            return await fleet.collect(quiet, deadline, request.get("serverPids", []))
        case "close":
            return await fleet.close(request.get("timeout", 30.0))
        case other:
            raise ValueError(f"unknown command {other!r}")


async def serve_commands() -> None:
    """Answer the runner's commands until `quit` or the end of stdin."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    fleet = Fleet()
    try:
        while line := await reader.readline():
            request = loads(line)
            if request.get("cmd") == "quit":
                break
            try:
                reply = await dispatch(fleet, request)
            except Exception as error:  # reported to the runner, which stops
                reply = {"error": f"{type(error).__name__}: {error}"}
            sys.stdout.write(dumps(reply).decode() + "\n")
            sys.stdout.flush()
    finally:
        await fleet.close(timeout=10.0)


def main() -> None:
    raise_open_files()
    uvloop.run(serve_commands())


if __name__ == "__main__":
    main()
