"""Fakes for the fan-out's unit tests: what an `Outbound` writes to, and what it writes.

`RecordingSink` stands in for a WebSocket connection (gateway/wire/connection.py)
as an `Outbound` sees it: a transport, whose every `write()` is recorded and
whose backlog a test sets, and `close_now`, recorded with its prefix.
"""

from __future__ import annotations

import orjson

from gateway.fanout.outbound import Flusher, Outbound
from gateway.fanout.publication import Outgoing, Publication
from gateway.fanout.stats import Stats

LIMIT_BYTES = 1 << 20


class RecordingTransport:
    """Records each `write()`; its backlog is what a test sets, its failure what a test makes."""

    def __init__(self, backlog: int = 0) -> None:
        # One entry per `write()` call, as written.
        self.writes: list[bytes] = []
        # What `get_write_buffer_size` answers: the bytes the kernel did not take yet.
        self.backlog = backlog
        self.closing = False
        # Raised by `write` while set, as a broken connection might.
        self.failure: Exception | None = None

    def write(self, data: bytes) -> None:
        if self.failure is not None:
            raise self.failure
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.backlog

    def is_closing(self) -> bool:
        return self.closing


class RecordingSink:
    """A connection as an outbound sees it: a recording transport, and recorded closes."""

    def __init__(self, backlog: int = 0) -> None:
        self.transport = RecordingTransport(backlog)
        # (code, reason, prefix) for each `close_now` call, in order.
        self.closes: list[tuple[int, str, bytes]] = []

    def close_now(self, code: int, reason: str, prefix: bytes = b"") -> None:
        self.closes.append((code, reason, prefix))

    @property
    def writes(self) -> list[bytes]:
        return self.transport.writes


def publication(
    seq: int, published_at: float | None = None, event_id: int = 1, size: int = 0
) -> Publication:
    """A publication of `event_id` at `seq`, its JSON padded with `size` more characters."""
    message: dict[str, object] = {"eventId": event_id, "seq": seq}
    if size:
        message["pad"] = "x" * size
    return Publication(orjson.dumps(message), event_id, seq, published_at)


def reply(kind: str) -> Outgoing:
    """A server reply (not a delivery) of type `kind`."""
    return Outgoing(orjson.dumps({"type": kind}))


def frames(*items: Outgoing) -> bytes:
    """The bytes of `items`' frames, one after another, as one write carries them."""
    return b"".join(item.frame for item in items)


def outbound(
    flusher: Flusher,
    stats: Stats,
    *,
    limit: int = LIMIT_BYTES,
    head: bytes = b"",
    backlog: int = 0,
) -> tuple[Outbound, RecordingSink]:
    """An outbound writing to a new recording sink, and that sink."""
    sink = RecordingSink(backlog)
    return Outbound(sink, head, limit, stats, flusher), sink
