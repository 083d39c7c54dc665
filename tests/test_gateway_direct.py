"""The hub's direct path (WS_IMPL=fast): publications written straight to steady transports.

The hub bypasses a watcher's writer only while nothing of that writer's could
be overtaken or refused: these tests pin each way out of the direct path and
back. Pure logic on recording transports; real sockets are in the end-to-end tests.
"""

from __future__ import annotations

import orjson

from gateway.flusher import Flusher
from gateway.frame_writer import FrameWriter
from gateway.hub import Hub, Subscription
from gateway.metrics import Stats
from gateway.publication import Outgoing
from gateway.writer import SLOW_CONSUMER, Writer
from tests.support.sinks import NoBroker, RecordingSink, publication
from tests.support.wait import scheduled_callbacks_run


class Fixture:
    """A hub, its flusher and stats, and a way to add live watchers of event 1."""

    def __init__(self) -> None:
        self.flusher, self.stats = Flusher(float), Stats()
        self.hub = Hub(NoBroker(), 1 << 20, self.flusher, self.stats)  # type: ignore[arg-type]

    async def watcher(
        self, last_seq: int = 0, limit: int = 1 << 20
    ) -> tuple[Subscription, FrameWriter, RecordingSink]:
        sink = RecordingSink()
        writer = FrameWriter(sink, limit, self.stats, self.flusher)  # type: ignore[arg-type]
        subscription = Subscription(1, writer, last_seq=last_seq)
        await self.hub.subscribe(subscription)
        subscription.go_live()
        return subscription, writer, sink


def reply(text: str) -> Outgoing:
    return Outgoing(orjson.dumps({"type": text}))


async def test_a_steady_watcher_is_written_by_the_hub_itself() -> None:
    """Live and idle: the frame goes to the transport at once and counts as a delivery."""
    fixture = Fixture()
    subscription, writer, sink = await fixture.watcher()
    assert subscription.direct is sink.transport
    fixture.hub.handle_publication(publication(1))
    assert sink.writes == [publication(1).frame]
    assert fixture.stats.deliveries == 1
    # A reply in the same turn follows it at once: nothing of the writer's waits.
    assert writer.offer(reply("pong"))
    assert sink.writes == [publication(1).frame, reply("pong").frame]


async def test_gathered_frames_are_never_overtaken() -> None:
    """A writer holding frames for the turn's end gets the publication after them."""
    fixture = Fixture()
    subscription, writer, sink = await fixture.watcher()
    writer.offer(reply("first"))
    writer.offer(reply("second"))
    assert subscription.direct is None
    fixture.hub.handle_publication(publication(1))
    assert sink.writes == [reply("first").frame]
    await scheduled_callbacks_run()
    assert sink.writes == [reply("first").frame, reply("second").frame + publication(1).frame]
    assert subscription.direct is sink.transport
    assert fixture.stats.deliveries == 1


async def test_a_backlog_goes_through_the_writers_budget() -> None:
    """A kernel backlog over the budget closes with 4008 and writes nothing; under it, written."""
    fixture = Fixture()
    slow, _, slow_sink = await fixture.watcher(limit=200)
    steady, _, steady_sink = await fixture.watcher(limit=200)
    slow_sink.transport.buffered = 190
    steady_sink.transport.buffered = 10
    fixture.hub.handle_publication(publication(1))
    assert slow_sink.writes == []
    assert slow_sink.closes == [(SLOW_CONSUMER, "Slow consumer: outbound buffer overflowed")]
    assert slow.direct is None
    assert steady_sink.writes == [publication(1).frame]
    assert steady.direct is steady_sink.transport
    assert (fixture.stats.deliveries, fixture.stats.slow_consumer_closes) == (1, 1)


async def test_a_closed_or_closing_connection_gets_nothing() -> None:
    """Closed by the writer, or its transport closing under uvicorn: no write, no error."""
    fixture = Fixture()
    closed, writer, closed_sink = await fixture.watcher()
    _, _, closing_sink = await fixture.watcher()
    writer.close(1000, "")
    closing_sink.transport.closing = True
    assert closed.direct is None
    fixture.hub.handle_publication(publication(1))
    assert closed_sink.writes == []
    assert closing_sink.writes == []
    assert fixture.stats.deliveries == 0


async def test_a_watcher_that_left_is_not_written() -> None:
    """Unsubscribing ends the direct path, even if the writer keeps its connection."""
    fixture = Fixture()
    left, _, left_sink = await fixture.watcher()
    _, _, stays_sink = await fixture.watcher()
    fixture.hub.unsubscribe(left)
    assert left.direct is None
    fixture.hub.handle_publication(publication(1))
    assert left_sink.writes == []
    assert stays_sink.writes == [publication(1).frame]


async def test_a_replay_ahead_of_the_live_stream_is_not_repeated() -> None:
    """A watcher that replayed up to seq 5 gets neither 4 nor 5 again, then 6 directly."""
    fixture = Fixture()
    subscription, _, sink = await fixture.watcher(last_seq=5)
    for seq in (4, 5):
        fixture.hub.handle_publication(publication(seq))
        await scheduled_callbacks_run()
    assert sink.writes == []
    fixture.hub.handle_publication(publication(6))
    assert sink.writes == [publication(6).frame]
    assert subscription.last_seq == 6


async def test_a_queued_writer_never_goes_direct() -> None:
    """uvicorn's own implementations send through the writer task: `direct` stays None."""
    fixture = Fixture()
    writer = Writer(None, 1 << 20, fixture.stats, 1.0)  # type: ignore[arg-type]
    subscription = Subscription(1, writer, last_seq=0)
    await fixture.hub.subscribe(subscription)
    subscription.go_live()
    fixture.hub.handle_publication(publication(1))
    assert subscription.direct is None
    assert subscription.last_seq == 1
