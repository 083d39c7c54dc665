"""One connection's outbound side under WS_IMPL=fast: frames straight to its transport.

No task and no queue of its own. The first frame of a loop turn is written
at once; what follows in the same turn is gathered and written in one more
`write()` by the `Flusher`. The transport's buffer is the rest of the queue:
its backlog plus what waits for this turn must fit OUTBOUND_BUFFER_BYTES, or
the client is closed with 4008. A close request writes the close frame at
once (`FrameSink.close_now`), which also ends the session's reading.

The writer also decides when the hub may bypass it: while it is open and
holds no gathered frames, its subscriptions are attached to its transport
(`Subscription.attach_transport`), and a publication the hub writes there
itself cannot overtake anything of this writer's.
"""

from __future__ import annotations

from gateway.fastws import FrameSink
from gateway.flusher import Flusher
from gateway.metrics import Stats
from gateway.publication import Outgoing
from gateway.writer import SLOW_CONSUMER, SLOW_CONSUMER_REASON, DirectTransport, Watching


class FrameWriter:
    """Write pre-built frames for one client, in order, coalescing what a turn brings."""

    # One per connection, touched for every delivery: slots keep it small and quick.
    __slots__ = (
        "_flusher",
        "_frames",
        "_gathered_deliveries",
        "_limit_bytes",
        "_live",
        "_pending_bytes",
        "_sink",
        "_stats",
        "_transport",
        "_turn",
        "close_request",
        "peer_closed",
    )

    def __init__(self, sink: FrameSink, limit_bytes: int, stats: Stats, flusher: Flusher) -> None:
        self._sink = sink
        self._transport: DirectTransport = sink.transport
        self._flusher = flusher
        self._limit_bytes = limit_bytes
        self._stats = stats
        # Frames gathered this turn, for the flusher; publications among them.
        self._frames: list[bytes] = []
        self._gathered_deliveries = 0
        self._pending_bytes = 0
        # The flusher's turn in which this writer last wrote at once or gathered (`offer`).
        self._turn = -1
        # The live subscriptions of this connection; a tuple: most have one, idle ones none.
        self._live: tuple[Watching, ...] = ()
        # (code, reason) once a close is requested; None while open.
        self.close_request: tuple[int, str] | None = None
        # True once the reader saw the client's close: the server must not send one now.
        self.peer_closed = False

    def offer(self, frame: Outgoing) -> bool:
        """Write or gather `frame`; False when closing, or when it overflowed (then 4008)."""
        if self.close_request is not None:
            return False
        turn = self._flusher.turn
        if self._turn != turn:
            # The first frame of a loop turn goes out at once; only what follows it
            # in the same turn (a burst) waits for the flusher, to share one write.
            # (Gathered frames imply this turn: nothing waits that this could overtake.)
            self._turn = turn
            self._write(frame.frame, frame.deliveries)
            return self.close_request is None
        return self.gather(frame)

    def gather(self, frame: Outgoing) -> bool:
        """Hold `frame` for this turn's one write (see `offer`); False if closing or overflowed."""
        if self.close_request is not None:
            return False
        # One frame always fits, so a small buffer never refuses a lone large message.
        pending = self._pending_bytes
        if pending and pending + frame.size > self._limit_bytes:
            self._overflowed()
            return False
        self._pending_bytes = pending + frame.size
        frames = self._frames
        if not frames:
            self._turn = self._flusher.turn
            self._flusher.gathered(self)
            # A direct write now would overtake these frames.
            for subscription in self._live:
                subscription.detach_transport()
        frames.append(frame.frame)
        self._gathered_deliveries += frame.deliveries
        return True

    def go_direct(self, subscription: Watching) -> None:
        """Offer the hub this transport for `subscription`, now and after each flush."""
        if self.close_request is not None:
            return
        if subscription not in self._live:
            self._live += (subscription,)
        if not self._frames:
            subscription.attach_transport(self._transport)

    def forget(self, subscription: Watching) -> None:
        subscription.detach_transport()
        if subscription in self._live:
            self._live = tuple(live for live in self._live if live is not subscription)

    def flush(self) -> None:
        """Write the frames gathered this loop turn in one `write()` (the flusher calls this)."""
        frames = self._frames
        if not frames:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        frames.clear()
        deliveries, self._gathered_deliveries = self._gathered_deliveries, 0
        self._pending_bytes = 0
        self._write(data, deliveries)
        if self.close_request is None:
            transport = self._transport
            for subscription in self._live:
                subscription.attach_transport(transport)

    def close(self, code: int, reason: str) -> None:
        """Drop what is gathered and send the close frame now; the first request wins."""
        if self.close_request is not None:
            return
        self.close_request = (code, reason)
        self._frames.clear()
        self._pending_bytes = 0
        for subscription in self._live:
            subscription.detach_transport()
        self._live = ()
        if not self.peer_closed:
            self._sink.close_now(code, reason)

    def peer_gone(self) -> None:
        """The client closed (or vanished): write nothing more, and no close frame."""
        self.peer_closed = True
        self.close(1000, "")

    def _write(self, data: bytes, deliveries: int) -> None:
        """Write frames to the transport, unless its backlog plus them overflows (4008)."""
        transport = self._transport
        backlog = transport.get_write_buffer_size()
        if backlog and backlog + len(data) > self._limit_bytes:
            self._overflowed()
        elif not (self._sink.close_sent or transport.is_closing()):
            head = self._sink.head
            if head is not None:  # the 101 response, held for this write
                self._sink.head = None
                data = head + data
            transport.write(data)
            self._stats.deliveries += deliveries

    def _overflowed(self) -> None:
        self._stats.slow_consumer_closes += 1
        self.close(SLOW_CONSUMER, SLOW_CONSUMER_REASON)
