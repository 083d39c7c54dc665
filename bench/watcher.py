"""One watching client of the load client: a WebSocket connection as an asyncio protocol.

Every message it receives costs a few slices (`FrameReader`) and one `orjson`
decode; a seat change appends its `seq` and one latency to the shared window.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import Counter
from typing import cast

from orjson import JSONDecodeError, loads

from bench.wsclient import (
    CLOSE,
    HEADER_END,
    NO_STATUS,
    PING,
    PONG,
    TEXT,
    FrameReader,
    ProtocolError,
    check_upgrade,
    client_frame,
)
from shared.messages import parse_iso

CHANGE_TYPES = frozenset({"booking_created", "booking_cancelled"})
# Close status 1001 "going away": the client leaves.
GOING_AWAY = (1001).to_bytes(2)


class Window:
    """What arrived since the last `arm`: one latency per delivery."""

    def __init__(self) -> None:
        self.latencies = array("d")
        self.arrived = 0
        # Deliveries that complete the window: watchers x expected seqs.
        self.target = 0
        self.complete = asyncio.Event()
        # A message's timestamp text -> its epoch seconds: parsed once, not per watcher.
        self._sent_at: dict[str, float] = {}

    def reset(self, target: int) -> None:
        self.latencies = array("d")
        self.arrived = 0
        self.target = target
        self.complete.clear()
        if target == 0:
            self.complete.set()
        self._sent_at.clear()

    def record(self, timestamp: str) -> None:
        now = time.time()
        sent = self._sent_at.get(timestamp)
        if sent is None:
            sent = self._sent_at[timestamp] = parse_iso(timestamp).timestamp()
        self.latencies.append(now - sent)
        self.arrived += 1
        if self.arrived == self.target:
            self.complete.set()


class Watcher(asyncio.Protocol):
    """One connection watching one event: keeps the seqs it received."""

    def __init__(self, request: bytes, window: Window, closes: Counter[str]) -> None:
        self._request = request
        self._window = window
        self._closes = closes
        self._frames = FrameReader()
        # The server's answer to the upgrade so far; None once upgraded.
        self._head: bytes | None = b""
        # Set by connection_made.
        self._transport: asyncio.Transport | None = None
        self.seqs: list[int] = []
        self.errors: Counter[str] = Counter()
        # Why the connection failed, when it did.
        self.failure: str | None = None
        loop = asyncio.get_running_loop()
        # True once `subscribed` arrived, False if the connection ended before.
        self.ready: asyncio.Future[bool] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but behave as one.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if self._head is not None:
            data = self._upgrade(data)
            if not data:
                return
        try:
            messages = self._frames.feed(data)
        except ProtocolError as error:
            self.abort(str(error))
            return
        for opcode, payload in messages:
            if opcode == TEXT:
                self._text(payload)
            else:
                self._control(opcode, payload)

    def _upgrade(self, data: bytes) -> bytes:
        """Consume the server's upgrade answer; return what follows it."""
        assert self._head is not None
        head = self._head + data
        end = head.find(HEADER_END)
        if end < 0:
            self._head = head
            return b""
        self._head = None
        try:
            check_upgrade(head[:end])
        except ProtocolError as error:
            self.abort(str(error))
            return b""
        return head[end + len(HEADER_END) :]

    def _text(self, payload: bytes) -> None:
        try:
            message = loads(payload)
            kind = message.get("type")
        except (JSONDecodeError, AttributeError):
            self.errors["not a JSON object"] += 1
            return
        if kind in CHANGE_TYPES:
            self.seqs.append(message["seq"])
            self._window.record(message["timestamp"])
        elif kind == "subscribed" and not self.ready.done():
            self.ready.set_result(True)
        elif kind == "error":
            self.errors[str(message.get("code"))] += 1

    def _control(self, opcode: int, payload: bytes) -> None:
        assert self._transport is not None
        if opcode == PING:
            self._transport.write(client_frame(PONG, payload))
        elif opcode == CLOSE:
            code = int.from_bytes(payload[:2]) if len(payload) >= 2 else NO_STATUS
            self._closes[str(code)] += 1
            self.close(payload[:2])

    def close(self, status: bytes = GOING_AWAY) -> None:
        """Send a close frame and close the connection."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(client_frame(CLOSE, status))
            self._transport.close()

    def abort(self, reason: str) -> None:
        self.failure = self.failure or reason
        if self._transport is not None:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(False)
        if not self.closed.done():
            self.closed.set_result(None)
