"""The fan-out scenarios, run in order against one fresh server process.

1. connect: `burst_watchers` clients of one event, ramped up with a bounded
   number in flight: connects per second (JWT verified by the server) and the
   server's CPU per connect; then idle: resident memory per connected,
   subscribed client;
2. burst: those same clients, `burst_messages` published as fast as one
   publisher goes;
3. paced: `paced_watchers` clients of another event, `paced_per_second`
   messages a second for `paced_seconds`;
4. routing: `routing_events` events with `routing_watchers` clients each,
   `routing_rounds` rounds that each publish the next seq of every event.

Server CPU is read from /proc right before publishing and right after the last
watcher received its last message, so connecting and closing are not in it.
Before connecting and before publishing, the runner waits for the server to go
idle, so work left over from the previous step never counts in the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench import procstat
from bench.control import LoadClient, LoadClientError
from bench.publisher import Feed
from bench.servers import Backend, ServerFailed, ServerProcess, ServerSpec
from shared.channels import event_channel
from tests.support.ports import free_port

SUBSCRIBE_SECONDS = 30.0
# Per handshake (up to `subscribed`): generous for loopback, short enough to give up.
CONNECT_TIMEOUT_SECONDS = 10.0
NUMSUB_BATCH = 500
# The server counts as idle when it used under IDLE_SHARE of a core over a window.
IDLE_WINDOW_SECONDS = 0.1
IDLE_SHARE = 0.05
SETTLE_SECONDS = 60.0
# However busy the server stays, a scenario ends after this long.
COLLECT_DEADLINE_SECONDS = 300.0
POLL_SECONDS = 0.05

Result = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each scenario is."""

    burst_watchers: int
    burst_messages: int
    paced_watchers: int
    paced_per_second: float
    paced_seconds: float
    routing_events: int
    routing_watchers: int
    routing_rounds: int
    routing_per_second: float
    # Connections in flight at once while ramping up.
    connect_concurrency: int = 128
    # A watcher missing messages: give up after this long without any arriving.
    quiet_seconds: float = 5.0
    publish_concurrency: int = 16

    @property
    def paced_messages(self) -> int:
        return round(self.paced_per_second * self.paced_seconds)


FULL = Sizes(
    burst_watchers=5000,
    burst_messages=200,
    paced_watchers=1000,
    paced_per_second=20.0,
    paced_seconds=5.0,
    routing_events=1000,
    routing_watchers=5,
    routing_rounds=10,
    routing_per_second=2.0,
)
QUICK = Sizes(
    burst_watchers=1000,
    burst_messages=40,
    paced_watchers=250,
    paced_per_second=20.0,
    paced_seconds=1.5,
    routing_events=100,
    routing_watchers=5,
    routing_rounds=4,
    routing_per_second=4.0,
    quiet_seconds=3.0,
)


class NotSubscribed(Exception):
    """Redis never saw a subscriber for some watched channel."""


@dataclass(slots=True)
class Bench:
    """Everything a scenario needs besides the server and the load client."""

    backend: Backend
    redis: Redis
    feed: Feed
    sizes: Sizes
    log_dir: Path
    # Fresh event ids: no scenario ever sees another's seqs.
    event_ids: Iterator[int]
    # `--only`: the scenarios to run (a group runs when it holds one of them); None: all.
    only: frozenset[str] | None = None

    def fresh_events(self, count: int) -> list[int]:
        return [next(self.event_ids) for _ in range(count)]


@dataclass(frozen=True, slots=True)
class Trial:
    """One server process under test and the load client watching it."""

    bench: Bench
    server: ServerProcess
    client: LoadClient


Scenario = Callable[[Trial], Awaitable[dict[str, Result]]]


async def run_server(bench: Bench, spec: ServerSpec, run: int) -> dict[str, Result]:
    """Every scenario against one fresh process of `spec`; failures become `error` entries."""
    slug = re.sub(r"[^a-z0-9]+", "-", spec.name.lower())
    server = ServerProcess(spec, free_port(), bench.backend, bench.log_dir / f"{slug}-run{run}.log")
    try:
        await server.start()
    except ServerFailed as error:
        return {"start": {"error": str(error)}}
    client = await LoadClient.start(bench.log_dir / f"loadclient-{slug}-run{run}.log")
    trial = Trial(bench, server, client)
    results: dict[str, Result] = {}
    try:
        for names, scenario in SCENARIOS:
            if bench.only is not None and bench.only.isdisjoint(names):
                continue
            results.update(await _guarded(names, scenario, trial))
    finally:
        await client.stop()
        await server.stop()
    return results


async def _guarded(names: tuple[str, ...], scenario: Scenario, trial: Trial) -> dict[str, Result]:
    server = trial.server
    if not server.alive:
        return {name: {"error": f"server exited: {server.last_log_line()}"} for name in names}
    try:
        return await scenario(trial)
    except (LoadClientError, NotSubscribed, TimeoutError) as error:
        failed = f"{type(error).__name__}: {error}"
        if not server.alive:
            failed += f" (server exited: {server.last_log_line()})"
        return {name: {"error": failed} for name in names}
    finally:
        if server.alive:
            # A dead client makes the next scenario fail and say so.
            with contextlib.suppress(LoadClientError):
                await trial.client.call("close")


async def connect_idle_burst(trial: Trial) -> dict[str, Result]:
    """Connect the burst watchers (connect rate, idle memory), then the burst."""
    bench, server = trial.bench, trial.server
    sizes = bench.sizes
    [event] = bench.fresh_events(1)
    await settle(server)
    memory_before = procstat.rss(server.pid)
    cpu_before = procstat.cpu(server.pid)
    ramp = await connect(trial, [event], sizes.burst_watchers)
    cpu = procstat.cpu(server.pid) - cpu_before
    connected = max(ramp["connected"], 1)
    grown_kib = procstat.rss(server.pid) - memory_before
    burst = await deliver(
        trial,
        sizes.burst_messages,
        lambda: bench.feed.burst(event, sizes.burst_messages),
    )
    return {
        "connect": {
            "clients": sizes.burst_watchers,
            "connected": ramp["connected"],
            "failed": ramp["failed"],
            "failures": ramp["failures"],
            "connectsPerSecond": ramp["connectsPerSecond"],
            "serverCpuUsPerConnect": cpu.total_seconds / connected * 1e6,
            "clientCpuUsPerConnect": ramp["clientCpuSeconds"] / connected * 1e6,
        },
        "idle": {"clients": ramp["connected"], "kibPerConnection": grown_kib / connected},
        "burst": burst,
    }


async def paced(trial: Trial) -> dict[str, Result]:
    """One event, many watchers, messages at a steady rate."""
    bench = trial.bench
    sizes = bench.sizes
    [event] = bench.fresh_events(1)
    ramp = await connect(trial, [event], sizes.paced_watchers)
    result = await deliver(
        trial,
        sizes.paced_messages,
        lambda: bench.feed.paced(event, sizes.paced_messages, sizes.paced_per_second),
    )
    return {"paced": {**result, "settleBeforeConnectSeconds": ramp["settleSeconds"]}}


async def routing(trial: Trial) -> dict[str, Result]:
    """Many events with a few watchers each: the server's routing per message counts."""
    bench = trial.bench
    sizes = bench.sizes
    events = bench.fresh_events(sizes.routing_events)
    ramp = await connect(trial, events, sizes.routing_watchers)
    result = await deliver(
        trial,
        sizes.routing_rounds,
        lambda: bench.feed.rounds(
            events, sizes.routing_rounds, sizes.routing_per_second, sizes.publish_concurrency
        ),
    )
    return {"routing": {**result, "settleBeforeConnectSeconds": ramp["settleSeconds"]}}


SCENARIOS: tuple[tuple[tuple[str, ...], Scenario], ...] = (
    (("connect", "idle", "burst"), connect_idle_burst),
    (("paced",), paced),
    (("routing",), routing),
)
DELIVERY_SCENARIOS = ("paced", "burst", "routing")


async def connect(trial: Trial, events: list[int], per_event: int) -> Result:
    """Open `per_event` watchers of each event; return once Redis sees every channel."""
    bench = trial.bench
    settled = await settle(trial.server)
    reply = await trial.client.call(
        "connect",
        url=trial.server.ws_url,
        secret=bench.backend.jwt_secret,
        events=events,
        perEvent=per_event,
        concurrency=bench.sizes.connect_concurrency,
        timeout=CONNECT_TIMEOUT_SECONDS,
    )
    if reply["connected"] == 0:
        raise LoadClientError(
            f"no client connected (the server settled for {settled:.1f} s before): "
            f"{reply['failures']}"
        )
    await wait_subscribed(bench.redis, events)
    return {**reply, "settleSeconds": settled}


async def wait_subscribed(redis: Redis, events: list[int]) -> None:
    """Until Redis counts a subscriber on every event's channel (the server said `subscribed`)."""
    deadline = asyncio.get_running_loop().time() + SUBSCRIBE_SECONDS
    pending = [event_channel(event) for event in events]
    while pending:
        counts: list[tuple[bytes | str, int]] = []
        for start in range(0, len(pending), NUMSUB_BATCH):
            counts += await redis.pubsub_numsub(*pending[start : start + NUMSUB_BATCH])
        pending = [_text(channel) for channel, count in counts if count == 0]
        if pending and asyncio.get_running_loop().time() > deadline:
            raise NotSubscribed(f"{len(pending)} channels without a subscriber, e.g. {pending[0]}")
        if pending:
            await asyncio.sleep(POLL_SECONDS)  # poll


async def deliver(trial: Trial, messages: int, publish: Callable[[], Awaitable[None]]) -> Result:
    """Publish, wait until every watcher has seqs 1..messages (or gave up), measure."""
    bench, server, client = trial.bench, trial.server, trial.client
    settled = await settle(server)
    armed = await client.call("arm", expected=messages)
    bench.feed.refused = 0
    cpu_before = procstat.cpu(server.pid)
    await publish()
    got = await client.call(
        "collect",
        quiet=bench.sizes.quiet_seconds,
        deadline=COLLECT_DEADLINE_SECONDS,
        serverPids=procstat.process_tree(server.pid),
    )
    cpu = procstat.cpu(server.pid) - cpu_before
    delivered = max(got["delivered"], 1)
    return {
        "watchers": armed["watchers"],
        "messages": messages,
        "expectedDeliveries": got["expected"],
        "delivered": got["delivered"],
        "lost": got["lost"],
        "duplicates": got["duplicates"],
        "outOfOrder": got["outOfOrder"],
        "unexpected": got["unexpected"],
        "incompleteWatchers": got["watchers"] - got["completeWatchers"],
        "closes": got["closes"],
        "errors": got["errors"],
        "refusedPublishes": bench.feed.refused,
        "latencyMs": got["latencyMs"],
        "seconds": got["seconds"],
        # Publish start to the last receipt: what the server (or the client) sustained.
        "deliveriesPerSecond": got["delivered"] / got["seconds"] if got["seconds"] else None,
        "serverCpuSeconds": cpu.total_seconds,
        "cpuUsPerDelivery": cpu.total_seconds / delivered * 1e6,
        "kernelShare": cpu.system_share,
        "clientCpuUsPerDelivery": got["clientCpuSeconds"] / delivered * 1e6,
        # How long the server stayed busy after connecting, before publishing began.
        "settleSeconds": settled,
    }


async def settle(server: ServerProcess) -> float:
    """Wait until the server is idle (what came before is done); the seconds it took.

    Closing thousands of clients or subscribing them leaves the server work to
    finish after the client is done; it must not count in the next scenario.
    Gives up after SETTLE_SECONDS: a server that never idles is measured anyway.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < SETTLE_SECONDS:
        before = procstat.cpu(server.pid)
        await asyncio.sleep(IDLE_WINDOW_SECONDS)  # poll: CPU used over a short window
        if (procstat.cpu(server.pid) - before).total_seconds < IDLE_SHARE * IDLE_WINDOW_SECONDS:
            break
    return loop.time() - started


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name
