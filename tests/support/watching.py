"""Watchers that reconnect like real clients and record every seq, and the bookings that feed them.

A `RecordingWatcher` follows one event the way the browser client does: on
any close or failed connection it reconnects (to the next URL of its list,
or through a load balancer to whatever replica answers) after a short
full-jitter backoff, and subscribes with `since` = the last seq it got. It
never drops anything: every change frame is recorded as it arrived, so a
test can check that across all reconnections each seq came exactly once, in
order. `BookingLoad` books (and now and then cancels) through the booking
API until told to stop, as a stream of seat changes for one event.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.support.processes import ServiceProcess
from tests.support.wait import async_wait_until, pause

CHANGE_TYPES = frozenset({"booking_created", "booking_cancelled"})
# Reconnect backoff: full jitter between 0 and min(cap, base * 2**attempt).
BACKOFF_BASE = 0.05
BACKOFF_CAP = 0.5
OPEN_TIMEOUT = 10.0


class SubscribeRefused(Exception):
    """The gateway answered the subscription with an error (e.g. Redis unavailable)."""


@dataclass
class Arrival:
    seq: int
    at: float


@dataclass
class RecordingWatcher:
    """One client following `event_id` over `urls`, reconnecting with `since` until cancelled."""

    urls: Sequence[str]
    token: str
    event_id: int
    # Every change frame's seq with its arrival time (monotonic), across connections.
    arrivals: list[Arrival] = field(default_factory=list)
    # The latest change frame.
    last_change: dict[str, Any] | None = None
    # The seq to resubscribe from: the latest change's, or where a fresh subscription started.
    last_seq: int | None = None
    # Monotonic times at which a subscription was confirmed (`subscribed` received).
    subscribed_at: list[float] = field(default_factory=list)
    # Close codes of the connections that ended (None: no close frame).
    close_codes: list[int | None] = field(default_factory=list)
    # Monotonic times of those closes.
    closed_at: list[float] = field(default_factory=list)
    # `subscribed` replies with `recovered: false`.
    unrecovered: int = 0
    # Errors the gateway sent (type "error").
    errors: list[dict[str, Any]] = field(default_factory=list)
    # Which of `urls` the next connection goes to.
    _index: int = 0
    # Set by `stop`: no reconnect after the connection in hand.
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def seqs(self) -> list[int]:
        return [a.seq for a in self.arrivals]

    @property
    def subscribed(self) -> bool:
        return bool(self.subscribed_at) and (
            not self.closed_at or self.subscribed_at[-1] > self.closed_at[-1]
        )

    def stop(self) -> None:
        self._stopped.set()

    async def run(self) -> None:
        attempt = 0
        while not self._stopped.is_set():
            url = self.urls[self._index % len(self.urls)]
            try:
                await self._connection(url)
            except ConnectionClosed as closed:
                self._closed(closed.rcvd.code if closed.rcvd is not None else None)
                attempt = 0 if closed.rcvd is not None and closed.rcvd.code == 1012 else attempt
            except (OSError, TimeoutError, InvalidHandshake, SubscribeRefused):
                self._index += 1
            attempt += 1
            delay = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))
            await pause(self._stopped, delay)  # reconnect backoff, as a real client does

    def _closed(self, code: int | None) -> None:
        self.close_codes.append(code)
        self.closed_at.append(time.monotonic())
        if code != 1012:
            # The replica went away without a word: try the next one first.
            self._index += 1

    async def _connection(self, url: str) -> None:
        async with connect(
            f"{url}/ws?token={self.token}",
            open_timeout=OPEN_TIMEOUT,
            ping_interval=None,
            max_size=None,
            compression=None,
            proxy=None,
        ) as ws:
            hello = orjson.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT))
            assert hello["type"] == "connection_established", hello
            await self._subscribe(ws)
            async for frame in ws:
                self._on_frame(orjson.loads(frame))

    async def _subscribe(self, ws: ClientConnection) -> None:
        message: dict[str, Any] = {"type": "subscribe_event", "eventId": self.event_id}
        if self.last_seq is not None:
            message["since"] = self.last_seq
        await ws.send(orjson.dumps(message).decode())

    def _on_frame(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in CHANGE_TYPES and message.get("eventId") == self.event_id:
            self.arrivals.append(Arrival(message["seq"], time.monotonic()))
            self.last_change = message
            self.last_seq = message["seq"]
        elif kind == "subscribed" and message.get("eventId") == self.event_id:
            self.subscribed_at.append(time.monotonic())
            if message.get("recovered") is False:
                self.unrecovered += 1
            if self.last_seq is None or message.get("recovered") is False:
                self.last_seq = message.get("seq") or 0
        elif kind == "error":
            self.errors.append(message)
            raise SubscribeRefused(str(message))

    def received_after(self, instant: float) -> float | None:
        """When the first change after `instant` arrived; None if none did."""
        return next((a.at for a in self.arrivals if a.at > instant), None)


class Watchers:
    """Many recording watchers run as tasks owned by this object."""

    def __init__(self, watchers: Sequence[RecordingWatcher]) -> None:
        self.watchers = list(watchers)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> Watchers:
        self._tasks = [asyncio.create_task(w.run()) for w in self.watchers]
        return self

    async def stop(self) -> None:
        for watcher in self.watchers:
            watcher.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        failed = [t.exception() for t in self._tasks if not t.cancelled() and t.exception()]
        assert not failed, failed

    def all_subscribed(self) -> bool:
        return all(w.subscribed for w in self.watchers)

    def all_reached(self, seq: int) -> bool:
        return all(w.last_seq is not None and w.last_seq >= seq for w in self.watchers)

    def describe(self) -> str:
        """Where the watchers stand, for a failure message."""
        last = Counter(w.last_seq for w in self.watchers).most_common(8)
        codes = Counter(c for w in self.watchers for c in w.close_codes).most_common(8)
        errors = [e for w in self.watchers for e in w.errors][:3]
        subscribed = sum(w.subscribed for w in self.watchers)
        return (
            f"{len(self.watchers)} watchers, {subscribed} subscribed; last seq (seq, watchers): "
            f"{last}; close codes: {codes}; errors: {errors}"
        )

    def min_seq(self) -> int:
        return min((w.last_seq or 0) for w in self.watchers)

    def max_seq(self) -> int:
        return max((w.last_seq or 0) for w in self.watchers)

    def first_arrival_above(self, seq: int) -> float:
        """When the first watcher got a change newer than `seq` (monotonic)."""
        return min(a.at for w in self.watchers for a in w.arrivals if a.seq > seq)

    def assert_exactly_once(self, final_seq: int, available_seats: int) -> None:
        """Every watcher got 1..final_seq once each, in order, ending at the database's seats."""
        expected = list(range(1, final_seq + 1))
        for watcher in self.watchers:
            assert watcher.seqs == expected, _difference(watcher.seqs, expected)
            assert watcher.unrecovered == 0
            assert watcher.last_change is not None
            assert watcher.last_change["availableSeats"] == available_seats


def _difference(got: list[int], expected: list[int]) -> str:
    duplicates = sorted({s for s in got if got.count(s) > 1})
    missing = sorted(set(expected) - set(got))
    disorder = [(a, b) for a, b in itertools.pairwise(got) if b <= a][:5]
    return f"missing {missing[:20]}, duplicated {duplicates[:20]}, out of order {disorder}"


@dataclass
class BookingLoad:
    """Book one seat at a time through the API (every fourth change a cancellation) until stopped."""

    api_url: str
    tokens: Sequence[str]
    event_id: int
    # Seconds between requests; 0 books as fast as the API answers.
    interval: float = 0.0
    # Successful changes, each one seq.
    changes: int = 0
    # Status codes of failed requests, with the error code of their body.
    failures: list[tuple[int, str]] = field(default_factory=list)
    # Slowest request, seconds.
    slowest: float = 0.0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _confirmed: list[tuple[str, str]] = field(default_factory=list)

    def stop(self) -> None:
        self._stop.set()

    async def run(self, limit: int | None = None) -> None:
        """Change seats until stopped, or until `limit` changes succeeded."""
        async with httpx.AsyncClient(base_url=self.api_url, timeout=15.0) as client:
            n = 0
            while not self._stop.is_set() and (limit is None or self.changes < limit):
                n += 1
                await self._one(client, n)
                if self.interval:
                    await pause(self._stop, self.interval)

    async def _one(self, client: httpx.AsyncClient, n: int) -> None:
        token = self.tokens[n % len(self.tokens)]
        started = time.monotonic()
        try:
            if n % 4 == 0 and self._confirmed:
                booking_id, owner = self._confirmed.pop(random.randrange(len(self._confirmed)))
                response = await client.delete(
                    f"/api/bookings/{booking_id}", headers=_bearer(owner)
                )
            else:
                response = await client.post(
                    "/api/bookings", json={"eventId": self.event_id}, headers=_bearer(token)
                )
        except httpx.TransportError as error:
            self.failures.append((0, type(error).__name__))
            await asyncio.sleep(0.05)  # poll: the load retries until the API answers again
            return
        finally:
            self.slowest = max(self.slowest, time.monotonic() - started)
        if response.status_code in (200, 201):
            self.changes += 1
            body = response.json()
            if body["status"] == "confirmed":
                self._confirmed.append((body["bookingId"], token))
            return
        code = _error_code(response)
        self.failures.append((response.status_code, code))
        await asyncio.sleep(0.05)  # poll: the load retries until the API is available again


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return response.text[:80]


async def create_event(api_url: str, admin_token: str, capacity: int = 1_000_000) -> int:
    async with httpx.AsyncClient(base_url=api_url, timeout=15.0) as client:
        response = await client.post(
            "/api/events",
            json={"name": "Fault drill", "capacity": capacity},
            headers=_bearer(admin_token),
        )
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def event_state(api_url: str, event_id: int) -> dict[str, Any]:
    """The event as the API reads it from PostgreSQL."""
    async with httpx.AsyncClient(base_url=api_url, timeout=15.0) as client:
        response = await client.get(f"/api/events/{event_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def report(what: str, seconds: float) -> None:
    """Print a measured recovery time (shown with `pytest -s`)."""
    print(f"\nRECOVERY {what}: {seconds:.2f} s")


def reaches(value: Callable[[], int], level: int) -> Callable[[], bool]:
    """A condition: `value()` is at least `level` (binds `level` now, unlike a lambda in a loop)."""
    return lambda: value() >= level


async def until(
    check: Callable[[], bool], timeout: float, what: str, explain: Callable[[], str] | None = None
) -> None:
    """Wait for `check()`; on timeout fail with what `explain()` says about the state."""

    async def condition() -> bool:
        return check()

    try:
        await async_wait_until(condition, timeout=timeout, what=what)
    except TimeoutError as error:
        if explain is None:
            raise
        raise AssertionError(f"{error}\n{explain()}") from None


def diagnostics(watchers: Watchers, processes: Sequence[ServiceProcess]) -> Callable[[], str]:
    """An `explain` for `until`: the watchers' state and each process's latest problems."""

    def explain() -> str:
        lines = [watchers.describe()]
        for process in processes:
            problems = [
                line
                for line in process.logs().splitlines()
                if '"level":"warning"' in line or '"level":"error"' in line
            ]
            lines.append(f"--- {process.module} on port {process.port}: warnings and errors")
            lines.extend(line[:400] for line in problems[-15:])
        return "\n".join(lines)

    return explain
