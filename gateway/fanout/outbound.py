"""One connection's outbound side: frames to its transport, in order, bounded, coalesced per turn.

Every connection has one `Outbound`, and everything the server writes to a
client goes through it: replies, replayed history, live publications (the
hub calls `send` for each watcher), the close. It has no task and no queue
of its own, and it never waits:

- The first frame of a turn is written at once. What follows in the same
  turn (a burst read from Redis in one go, or replies) is gathered, and the
  `Flusher` writes each outbound's gathered frames with one more `write()`
  when the turn ends: a burst costs two system calls per watcher, a lone
  message one. A turn ends with each read from Redis and with the flusher's
  end-of-loop callback, so frames wait at most one loop iteration.
- The transport's buffer is the rest of the queue: its backlog plus what
  waits for this turn must fit the byte budget (OUTBOUND_BUFFER_BYTES), or
  the client is closed with 4008, without the fan-out ever waiting for it.
- Closing is one sequence whoever asks (a rate limit, an expired token, an
  overflow, a drain): the first request wins, what is gathered is dropped,
  and the connection sends its close frame at once. When the client closed
  first, nothing more is written at all (`peer_gone`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

from gateway.fanout.publication import Outgoing, Publication
from gateway.fanout.stats import Stats

SLOW_CONSUMER: Final = 4008
SLOW_CONSUMER_REASON: Final = "Slow consumer: outbound buffer overflowed"

logger = logging.getLogger(__name__)


class Transport(Protocol):
    """What an outbound calls on a socket's transport (C methods under uvloop)."""

    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int: ...

    def is_closing(self) -> bool: ...


class Sink(Protocol):
    """The connection an outbound writes to: gateway/wire/connection.py for WebSocket."""

    @property
    def transport(self) -> Transport: ...

    def close_now(self, code: int, reason: str, prefix: bytes = b"") -> None:
        """Write `prefix`, then the close frame, at once; end the connection's reading."""


class Outbound:
    """Write pre-built frames for one client, in order, coalescing what a loop turn brings."""

    # One per connection, touched for every delivery: slots keep it small and quick.
    __slots__ = (
        "_flusher",
        "_frames",
        "_gathered_deliveries",
        "_head",
        "_limit_bytes",
        "_pending_bytes",
        "_sink",
        "_stats",
        "_transport",
        "_turn",
        "close_request",
        "peer_closed",
    )

    def __init__(
        self, sink: Sink, head: bytes, limit_bytes: int, stats: Stats, flusher: Flusher
    ) -> None:
        self._sink = sink
        self._transport = sink.transport
        # Bytes that go out before the first frame (the handshake's response); b"" once sent.
        self._head = head
        self._flusher = flusher
        self._limit_bytes = limit_bytes
        self._stats = stats
        # Frames gathered this turn, for the flusher, and how many of them are publications.
        self._frames: list[bytes] = []
        self._gathered_deliveries = 0
        self._pending_bytes = 0
        # The flusher's turn in which this outbound last wrote or gathered.
        self._turn = -1
        # (code, reason) once a close is requested; None while open.
        self.close_request: tuple[int, str] | None = None
        # True once the client closed (or vanished): no close frame of ours may follow.
        self.peer_closed = False

    def send(self, frame: Outgoing) -> None:
        """Write `frame` now if it is this turn's first, else gather it; nothing once closing."""
        if self.close_request is not None:
            return
        turn = self._flusher.turn
        if self._turn == turn:
            # Something went out this turn already: what follows shares the turn's
            # second write. (Gathered frames imply this turn: none can be overtaken.)
            self._gather(frame)
            return
        self._turn = turn
        self._write(frame.frame, frame.deliveries)

    def _gather(self, frame: Outgoing) -> None:
        # One frame always fits, so a small budget never refuses a lone large message.
        pending = self._pending_bytes
        if pending and pending + frame.size > self._limit_bytes:
            self.overflowed()
            return
        self._pending_bytes = pending + frame.size
        if not self._frames:
            self._flusher.gathered(self)
        self._frames.append(frame.frame)
        self._gathered_deliveries += frame.deliveries

    def flush(self) -> None:
        """Write what this turn gathered in one `write()` (the flusher calls this)."""
        frames = self._frames
        if not frames:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        frames.clear()
        deliveries, self._gathered_deliveries = self._gathered_deliveries, 0
        self._pending_bytes = 0
        if self.close_request is None:
            self._write(data, deliveries)

    def close(self, code: int, reason: str) -> None:
        """Drop what is gathered and send the close frame now; the first request wins."""
        if self.close_request is not None:
            return
        self.close_request = (code, reason)
        self._frames.clear()
        self._gathered_deliveries = self._pending_bytes = 0
        if not self.peer_closed:
            head, self._head = self._head, b""
            self._sink.close_now(code, reason, head)

    def peer_gone(self) -> None:
        """The client closed (or vanished): write nothing more, and no close frame."""
        self.peer_closed = True
        self.close(1000, "")

    def _write(self, data: bytes, deliveries: int) -> None:
        """Write to the transport, unless its backlog plus `data` overflows the budget (4008)."""
        transport = self._transport
        backlog = transport.get_write_buffer_size()
        if backlog and backlog + len(data) > self._limit_bytes:
            self.overflowed()
        elif not transport.is_closing():
            if self._head:
                data, self._head = self._head + data, b""
            transport.write(data)
            self._stats.deliveries += deliveries

    def overflowed(self) -> None:
        """The client fell too far behind: close it with 4008, counted as a slow consumer."""
        if self.close_request is None:
            self._stats.slow_consumer_closes += 1
        self.close(SLOW_CONSUMER, SLOW_CONSUMER_REASON)


class Flusher:
    """The end of a loop turn: every outbound's gathered frames written, each with one `write()`.

    One callback per loop turn, not one per connection. The delivery-latency
    histogram is observed here too, once per message after the writes it
    caused: once per delivery it would cost about as much as the fan-out.
    """

    def __init__(self, observe_latency: Callable[[float], None]) -> None:
        self._observe_latency = observe_latency
        # Outbounds with frames gathered this turn, each listed once.
        self._outbounds: list[Outbound] = []
        # Live publications fanned out this turn, to be timed once each.
        self._published: list[Publication] = []
        # The end-of-turn callback while one is scheduled; None otherwise.
        self._scheduled: asyncio.Handle | None = None
        # True once the fan-in marks turns itself (`next_turn`): a message with nothing
        # gathered is then timed at once, with no callback of its own.
        self._driven = False
        # Counts turns: an outbound that wrote in the current turn gathers what follows.
        self.turn = 0

    def gathered(self, outbound: Outbound) -> None:
        """`outbound` gathered its first frame of this turn: write its frames at the turn's end."""
        self._outbounds.append(outbound)
        if not self._scheduled:
            self._schedule()

    def fanned_out(self, publication: Publication) -> None:
        """`publication` went to its watchers this turn: time it once, after the writes."""
        if self._scheduled:
            self._published.append(publication)
        elif self._driven:
            # Nothing gathered: every write is done, and the next read starts a new turn.
            if publication.published_at is not None:
                self._observe_latency(time.time() - publication.published_at)
        else:
            self._published.append(publication)
            self._schedule()

    def next_turn(self) -> None:
        """A new read of input begins: write what the last one gathered, then a new turn.

        The fan-in calls this for every chunk it reads from Redis, so that a
        lone message needs no callback at the end of its loop turn.
        """
        self._driven = True
        if self._scheduled:
            self._scheduled.cancel()
            self._flush()
        else:
            self.turn += 1

    def _schedule(self) -> None:
        self._scheduled = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = None
        self.turn += 1
        outbounds, self._outbounds = self._outbounds, []
        for outbound in outbounds:
            try:
                outbound.flush()
            except Exception:
                # One broken connection must not keep the frames of the others.
                logger.exception("writing gathered frames failed")
        published, self._published = self._published, []
        if published:
            now = time.time()
            for publication in published:
                if publication.published_at is not None:
                    self._observe_latency(now - publication.published_at)
