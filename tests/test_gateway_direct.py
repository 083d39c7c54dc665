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

    async def steady(self) -> None:
        """Fan seq 1 out and end the turn: every open, idle watcher is then attached."""
        self.hub.handle_publication(publication(1))
        await scheduled_callbacks_run()


def reply(text: str) -> Outgoing:
    return Outgoing(orjson.dumps({"type": text}))


async def test_a_watcher_is_attached_after_its_first_fan_out() -> None:
    """The first publication goes through the writer; the next straight to the transport."""
    fixture = Fixture()
    subscription, writer, sink = await fixture.watcher()
    assert subscription.direct is None  # nothing fanned out yet: its place is unknown
    fixture.hub.handle_publication(publication(1))
    assert subscription.direct is sink.transport
    await scheduled_callbacks_run()
    fixture.hub.handle_publication(publication(2))
    assert sink.writes == [publication(1).frame, publication(2).frame]
    assert fixture.stats.deliveries == 2
    # The hub wrote seq 2 without touching the subscription; the event's seq stands for it.
    assert subscription.last_seq == 1
    assert fixture.hub.recovery_floor(1) == 2
    # A reply in the same turn follows at once: nothing of the writer's waits.
    assert writer.offer(reply("pong"))
    assert sink.writes[-1] == reply("pong").frame


async def test_gathered_frames_are_never_overtaken() -> None:
    """A writer holding frames for the turn's end gets the publication after them."""
    fixture = Fixture()
    subscription, writer, sink = await fixture.watcher()
    await fixture.steady()
    writer.offer(reply("first"))
    writer.offer(reply("second"))
    assert subscription.direct is None
    assert subscription.last_seq == 1
    fixture.hub.handle_publication(publication(2))
    assert sink.writes == [publication(1).frame, reply("first").frame]
    await scheduled_callbacks_run()
    assert sink.writes[-1] == reply("second").frame + publication(2).frame
    assert subscription.direct is sink.transport
    assert fixture.stats.deliveries == 2


async def test_a_backlog_goes_through_the_writers_budget() -> None:
    """A kernel backlog over the budget closes with 4008 and writes nothing; under it, written."""
    fixture = Fixture()
    slow, _, slow_sink = await fixture.watcher(limit=200)
    steady, _, steady_sink = await fixture.watcher(limit=200)
    await fixture.steady()
    slow_sink.transport.buffered = 190
    steady_sink.transport.buffered = 10
    fixture.hub.handle_publication(publication(2))
    assert slow_sink.writes == [publication(1).frame]
    assert slow_sink.closes == [(SLOW_CONSUMER, "Slow consumer: outbound buffer overflowed")]
    assert slow.direct is None
    assert steady_sink.writes == [publication(1).frame, publication(2).frame]
    assert steady.direct is steady_sink.transport
    assert (fixture.stats.deliveries, fixture.stats.slow_consumer_closes) == (3, 1)


async def test_a_closed_or_closing_connection_gets_nothing() -> None:
    """Closed by the writer, or its transport closing under uvicorn: no write, no error."""
    fixture = Fixture()
    closed, writer, closed_sink = await fixture.watcher()
    _, _, closing_sink = await fixture.watcher()
    await fixture.steady()
    writer.close(1000, "")
    closing_sink.transport.closing = True
    assert closed.direct is None
    fixture.hub.handle_publication(publication(2))
    assert closed_sink.writes == [publication(1).frame]
    assert closing_sink.writes == [publication(1).frame]
    assert fixture.stats.deliveries == 2


async def test_a_watcher_that_left_is_not_written() -> None:
    """Unsubscribing ends the direct path, even if the writer keeps its connection."""
    fixture = Fixture()
    left, _, left_sink = await fixture.watcher()
    _, _, stays_sink = await fixture.watcher()
    await fixture.steady()
    fixture.hub.unsubscribe(left)
    assert left.direct is None
    fixture.hub.handle_publication(publication(2))
    assert left_sink.writes == [publication(1).frame]
    assert stays_sink.writes == [publication(1).frame, publication(2).frame]


async def test_a_replay_ahead_of_the_live_stream_is_not_repeated() -> None:
    """A watcher that replayed up to seq 5 gets neither 4 nor 5 again; 6, then 7 directly."""
    fixture = Fixture()
    subscription, _, sink = await fixture.watcher(last_seq=5)
    for seq in (4, 5):
        fixture.hub.handle_publication(publication(seq))
        await scheduled_callbacks_run()
        assert subscription.direct is None
    assert sink.writes == []
    fixture.hub.handle_publication(publication(6))
    assert subscription.direct is sink.transport
    await scheduled_callbacks_run()
    fixture.hub.handle_publication(publication(7))
    assert sink.writes == [publication(6).frame, publication(7).frame]
    assert fixture.hub.recovery_floor(1) == 7


async def test_a_burst_detaches_and_the_flush_attaches_again() -> None:
    """Three messages in one turn: one direct write, two gathered into one; then attached."""
    fixture = Fixture()
    subscription, _, sink = await fixture.watcher()
    await fixture.steady()
    for seq in (2, 3, 4):
        fixture.hub.handle_publication(publication(seq))
    assert subscription.direct is None
    await scheduled_callbacks_run()
    assert sink.writes == [
        publication(1).frame,
        publication(2).frame,
        publication(3).frame + publication(4).frame,
    ]
    assert subscription.direct is sink.transport
    assert subscription.last_seq == 4


async def test_a_queued_writer_never_goes_direct() -> None:
    """uvicorn's own implementations send through the writer task: never attached."""
    fixture = Fixture()
    writer = Writer(None, 1 << 20, fixture.stats, 1.0)  # type: ignore[arg-type]
    subscription = Subscription(1, writer, last_seq=0)
    await fixture.hub.subscribe(subscription)
    subscription.go_live()
    for seq in (1, 2):
        fixture.hub.handle_publication(publication(seq))
        assert subscription.direct is None
    assert subscription.last_seq == 2
