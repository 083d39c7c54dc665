"""`seatcast watch`: follow events through the gateways the way the browser client does.

Same rules as gateway/static/client.js: subscribe with `mode: "add"`, move to
the next replica after a lost or failed connection, wait a full-jitter backoff
in between, resubscribe with `since` = the last seq seen, drop what was already
seen. Heartbeats are WebSocket pings (the `websockets` keepalive), which
browsers cannot send. Unlike a page, a terminal tool should fail fast: when no
gateway has answered yet, or the token is refused, `watch` stops with a
one-line `WatchFailed` instead of retrying forever.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from shared.backoff import full_jitter

CHANGE_TYPES = frozenset({"booking_created", "booking_cancelled"})
# A connection that lasted this long resets the backoff.
STABLE_SECONDS = 10.0
KEEPALIVE_SECONDS = 15.0

Emit = Callable[[dict[str, Any]], None]
Status = Callable[[str], None]


class WatchFailed(Exception):
    """Watching cannot go on; the message is one line for humans."""


@dataclass(frozen=True)
class WatchConfig:
    urls: tuple[str, ...]
    token: str
    event_ids: tuple[int, ...]
    since: int | None = None
    initial_delay: float = 0.5
    max_delay: float = 15.0
    open_timeout: float = 10.0


def is_auth_failure(code: int | None, reason: str) -> bool:
    """A 1008 about the token (the gateway also uses 1008 for flooding)."""
    return code == 1008 and re.search(r"token|auth", reason, re.IGNORECASE) is not None


class SeqTracker:
    """The last seq seen per event: builds resubscriptions and drops duplicates."""

    def __init__(self, event_ids: tuple[int, ...], since: int | None) -> None:
        # event id -> last seq delivered, None before the first.
        self.last: dict[int, int | None] = dict.fromkeys(event_ids, since)
        # event id -> the `since` of the subscription in flight, None without one.
        self.sent_since: dict[int, int | None] = {}

    def subscribe_message(self, event_id: int) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "subscribe_event", "eventId": event_id, "mode": "add"}
        since = self.last[event_id]
        if since is not None:
            message["since"] = since
        self.sent_since[event_id] = since
        return message

    def on_subscribed(self, message: dict[str, Any]) -> None:
        event_id, seq = message.get("eventId"), message.get("seq")
        if event_id not in self.last or not isinstance(seq, int):
            return
        replay_follows = (
            self.sent_since.get(event_id) is not None and message.get("recovered") is not False
        )
        last = self.last[event_id]
        # Without a replay, `seq` is where live messages start.
        if not replay_follows and (last is None or seq > last):
            self.last[event_id] = seq

    def accept(self, message: dict[str, Any]) -> bool:
        """Record a change; False for a duplicate or an event not watched."""
        event_id, seq = message.get("eventId"), message.get("seq")
        if event_id not in self.last:
            return False
        if not isinstance(seq, int):
            return True
        last = self.last[event_id]
        if last is not None and seq <= last:
            return False
        self.last[event_id] = seq
        return True


@dataclass
class Closed:
    """How a session ended: the close code and reason, and whether it got established."""

    code: int | None
    reason: str
    established: bool
    lasted: float


class Watcher:
    """Follow `config.event_ids` until a WatchFailed or cancellation."""

    def __init__(self, config: WatchConfig, emit: Emit, status: Status) -> None:
        self.config = config
        self.emit = emit
        self.status = status
        self.seqs = SeqTracker(config.event_ids, config.since)
        self.attempt = 0
        self.index = 0
        self.connected_once = False
        # url -> why the last attempt failed, for the attempts since the last success.
        self.failures: dict[str, str] = {}

    async def run(self) -> None:
        while True:
            url = self.config.urls[self.index]
            try:
                closed = await self._session(url)
            except (OSError, TimeoutError, InvalidHandshake) as error:
                self._on_connect_error(url, error)
            else:
                self._on_closed(url, closed)
            self.index = (self.index + 1) % len(self.config.urls)
            delay = full_jitter(self.attempt, self.config.initial_delay, self.config.max_delay)
            self.attempt += 1
            self.status(f"reconnecting to {self.config.urls[self.index]} in {delay:.1f} s")
            await asyncio.sleep(delay)

    def _on_connect_error(self, url: str, error: Exception) -> None:
        reason = describe_connect_error(url, error)
        if isinstance(error, InvalidURI) or (not self.connected_once and _is_wrong_place(error)):
            raise WatchFailed(reason)
        self.failures[url] = reason
        if not self.connected_once and len(self.failures) == len(self.config.urls):
            raise WatchFailed("; ".join(self.failures.values()))
        self.status(reason)

    def _on_closed(self, url: str, closed: Closed) -> None:
        reason = closed.reason or "no reason given"
        if is_auth_failure(closed.code, closed.reason):
            raise WatchFailed(f"the gateway at {url} refused the token: {reason} (1008)")
        if closed.established:
            self.failures.clear()
            if closed.lasted >= STABLE_SECONDS:
                self.attempt = 0
        self.status(f"connection to {url} closed: {closed.code} {reason}")

    async def _session(self, url: str) -> Closed:
        started = time.monotonic()
        established = False
        async with connect(
            f"{url}/ws",
            additional_headers={"Authorization": f"Bearer {self.config.token}"},
            open_timeout=self.config.open_timeout,
            ping_interval=KEEPALIVE_SECONDS,
            ping_timeout=KEEPALIVE_SECONDS,
            proxy=None,
        ) as ws:
            try:
                established = await self._establish(ws, url)
                if established:
                    async for text in ws:
                        self._deliver(text)
            except ConnectionClosed as error:
                code = error.rcvd.code if error.rcvd else 1006
                reason = error.rcvd.reason if error.rcvd else "connection lost"
                return Closed(code, reason, established, time.monotonic() - started)
            return Closed(
                ws.close_code, ws.close_reason or "", established, time.monotonic() - started
            )

    async def _establish(self, ws: ClientConnection, url: str) -> bool:
        first = json.loads(await asyncio.wait_for(ws.recv(), self.config.open_timeout))
        self.emit(first)
        if first.get("type") != "connection_established":
            return False
        self.connected_once = True
        self.status(f"connected to {url} as {first.get('clientId')}")
        for event_id in self.seqs.last:
            await ws.send(json.dumps(self.seqs.subscribe_message(event_id)))
        return True

    def _deliver(self, text: str | bytes) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "subscribed":
            self.seqs.on_subscribed(message)
        elif kind in CHANGE_TYPES and not self.seqs.accept(message):
            return
        self.emit(message)


def _is_wrong_place(error: Exception) -> bool:
    """Errors that retrying the same URL will not fix: not a gateway, or refused by it."""
    return isinstance(error, InvalidHandshake) and not (
        isinstance(error, InvalidStatus) and error.response.status_code >= 500
    )


def describe_connect_error(url: str, error: Exception) -> str:
    """One line saying why connecting to `url` failed."""
    if isinstance(error, InvalidURI):
        return f"{url} is not a WebSocket URL (expected ws://host:port)"
    if isinstance(error, InvalidStatus):
        status = error.response.status_code
        if status in (403, 404):
            # The gateway lets clients without an Origin (this one) through, so a refusal
            # here means nothing serves /ws: Starlette answers 403, others 404.
            return f"no WebSocket endpoint at {url}/ws (HTTP {status}): is this a seatcast gateway?"
        return f"{url} refused the handshake (HTTP {status})"
    if isinstance(error, InvalidHandshake):
        return f"{url} did not answer as a WebSocket server ({error})"
    if isinstance(error, ConnectionRefusedError):
        return f"cannot connect to {url}: connection refused (is the gateway running?)"
    if isinstance(error, TimeoutError):
        return f"cannot connect to {url}: timed out"
    return f"cannot connect to {url}: {error}"
