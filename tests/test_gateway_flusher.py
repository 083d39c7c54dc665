"""The flusher (WS_IMPL=fast): one write at once per connection, the rest of a turn in one more.

Pure logic on recording transports; the real sockets are in the end-to-end tests.
"""

from __future__ import annotations

import logging

import pytest

from gateway.flusher import Flusher
from gateway.frame_writer import FrameWriter
from gateway.hub import Hub
from gateway.metrics import Stats
from gateway.writer import SLOW_CONSUMER
from tests.support.sinks import NoBroker, RecordingSink, live_watchers, publication
from tests.support.wait import scheduled_callbacks_run


async def next_turn() -> None:
    """Until the flusher, scheduled with `call_soon`, has written this turn's frames."""
    await scheduled_callbacks_run()


async def test_a_burst_costs_each_watcher_two_writes_in_order() -> None:
    """Fifty messages in one turn: the first written at once, the other 49 joined into one write."""
    flusher, stats = Flusher(float), Stats()
    hub = Hub(NoBroker(), 1 << 20, flusher, stats)  # type: ignore[arg-type]
    sinks = await live_watchers(hub, flusher, stats, 3)
    burst = [publication(seq) for seq in range(1, 51)]
    for item in burst:
        hub.handle_publication(item)
    assert all(sink.writes == [burst[0].frame] for sink in sinks)
    await next_turn()
    rest = b"".join(item.frame for item in burst[1:])
    assert all(sink.writes == [burst[0].frame, rest] for sink in sinks)
    assert stats.deliveries == 150


async def test_each_turn_starts_with_a_write_at_once() -> None:
    """Paced messages, one per turn, each go out at once: one write per message per watcher."""
    flusher, stats = Flusher(float), Stats()
    hub = Hub(NoBroker(), 1 << 20, flusher, stats)  # type: ignore[arg-type]
    [sink] = await live_watchers(hub, flusher, stats, 1)
    for seq in range(1, 4):
        hub.handle_publication(publication(seq))
        assert len(sink.writes) == seq
        await next_turn()
    assert sink.writes == [publication(seq).frame for seq in range(1, 4)]


async def test_latency_is_observed_once_per_message_not_per_watcher() -> None:
    """Ten watchers, three messages: three observations, each after the turn's writes."""
    observed: list[float] = []
    flusher, stats = Flusher(observed.append), Stats()
    hub = Hub(NoBroker(), 1 << 20, flusher, stats)  # type: ignore[arg-type]
    await live_watchers(hub, flusher, stats, 10)
    for seq in range(1, 4):
        hub.handle_publication(publication(seq, published_at=1.0))
    hub.handle_publication(publication(4, published_at=None))
    assert observed == []
    await next_turn()
    assert len(observed) == 3
    assert all(seconds > 0 for seconds in observed)


async def test_a_turn_over_the_budget_closes_only_that_client() -> None:
    """Backlog plus the turn's frames over the budget: 4008 for that client, the others written."""
    flusher, stats = Flusher(float), Stats()
    hub = Hub(NoBroker(), 1 << 20, flusher, stats)  # type: ignore[arg-type]
    slow, fast = await live_watchers(hub, flusher, stats, 2, limit=200)
    hub.handle_publication(publication(1))
    slow.transport.buffered = 190
    for seq in range(2, 5):
        hub.handle_publication(publication(seq))
    await next_turn()
    assert slow.writes == [publication(1).frame]
    assert len(fast.writes) == 2
    assert stats.slow_consumer_closes == 1
    assert stats.deliveries == 1 + 4


async def test_one_failing_connection_does_not_keep_the_others_frames(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A transport that raises is logged; every other gathered writer is still written."""
    flusher, stats = Flusher(float), Stats()
    hub = Hub(NoBroker(), 1 << 20, flusher, stats)  # type: ignore[arg-type]
    broken, healthy = await live_watchers(hub, flusher, stats, 2)
    for seq in (1, 2):
        hub.handle_publication(publication(seq))

    def fail(data: bytes) -> None:
        raise RuntimeError("transport gone wrong")

    broken.transport.write = fail  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="gateway.flusher"):
        await next_turn()
    assert healthy.writes == [publication(1).frame, publication(2).frame]
    assert "writing gathered frames failed" in caplog.text


async def test_a_closed_writer_gathers_nothing_more() -> None:
    """After a close request the writer refuses frames and the flusher writes none of its."""
    flusher, stats = Flusher(float), Stats()
    sink = RecordingSink()
    writer = FrameWriter(sink, 1 << 20, stats, flusher)  # type: ignore[arg-type]
    assert writer.offer(publication(1))
    writer.close(SLOW_CONSUMER, "slow")
    assert writer.offer(publication(2)) is False
    await next_turn()
    assert sink.writes == [publication(1).frame]
    assert sink.closes == [(SLOW_CONSUMER, "slow")]


async def test_turns_marked_by_the_broker_need_no_callback_per_message() -> None:
    """Each Redis read starts a turn: a lone message is timed at once, a burst still coalesced."""
    observed: list[float] = []
    flusher, stats = Flusher(observed.append), Stats()
    hub = Hub(NoBroker(), 1 << 20, flusher, stats)  # type: ignore[arg-type]
    [sink] = await live_watchers(hub, flusher, stats, 1)
    hub.input_arrived()
    hub.handle_publication(publication(1, published_at=1.0))
    # The first fan-out went through the writer, which may gather: end that turn.
    await next_turn()
    observed.clear()
    hub.input_arrived()
    hub.handle_publication(publication(2, published_at=1.0))
    assert len(observed) == 1  # timed at once: nothing was gathered
    hub.input_arrived()
    for seq in (3, 4, 5):
        hub.handle_publication(publication(seq, published_at=1.0))
    assert sink.writes[-1] == publication(3).frame
    # The next read writes what the last one gathered before anything of its own.
    hub.input_arrived()
    assert sink.writes[-1] == publication(4).frame + publication(5).frame
    assert len(observed) == 4  # seqs 2 to 5, each once
    assert sink.writes == [publication(seq).frame for seq in (1, 2, 3)] + [
        publication(4).frame + publication(5).frame
    ]
