"""One connection's `Outbound` and the `Flusher` that ends each turn, on recording transports.

What is checked is what a client's transport receives: which bytes, in which
`write()` calls, in which order, and which close the connection was asked for.
The hub's use of them (many watchers per message) is in test_hub.py; real
sockets are in the end-to-end tests.
"""

from __future__ import annotations

import logging

import pytest

from gateway.fanout.outbound import SLOW_CONSUMER, SLOW_CONSUMER_REASON, Flusher
from gateway.fanout.publication import Outgoing
from gateway.fanout.stats import Stats
from tests.support.outbounds import frames, outbound, publication, reply
from tests.support.wait import scheduled_callbacks_run

HEAD = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
OVERFLOW = (SLOW_CONSUMER, SLOW_CONSUMER_REASON)


@pytest.fixture
def observed() -> list[float]:
    """The latencies the flusher observed, in order."""
    return []


@pytest.fixture
def flusher(observed: list[float]) -> Flusher:
    return Flusher(observed.append)


@pytest.fixture
def stats() -> Stats:
    return Stats()


async def end_of_turn() -> None:
    """Until the flusher's end-of-turn callback (scheduled with `call_soon`) has run."""
    await scheduled_callbacks_run()


# One write at once, the rest of the turn in one more.


async def test_a_turns_first_frame_goes_out_at_once_and_the_rest_in_one_more_write(
    flusher: Flusher, stats: Stats
) -> None:
    """The first frame is written at once; the turn's others, a reply among them, as one write in order."""
    out, sink = outbound(flusher, stats)
    items: list[Outgoing] = [publication(seq) for seq in range(1, 6)]
    items.insert(2, reply("pong"))
    for item in items:
        out.send(item)
    assert sink.writes == [items[0].frame]
    assert stats.deliveries == 1
    await end_of_turn()
    assert sink.writes == [items[0].frame, frames(*items[1:])]
    assert stats.deliveries == 5  # a reply is not a delivery
    # The next turn starts with a write at once again.
    out.send(publication(6))
    assert sink.writes[2] == publication(6).frame
    assert stats.deliveries == 6


async def test_a_lone_frame_costs_one_write(flusher: Flusher, stats: Stats) -> None:
    """A turn that brings one frame writes it at once, and its end writes nothing more."""
    out, sink = outbound(flusher, stats)
    out.send(reply("pong"))
    await end_of_turn()
    assert sink.writes == [reply("pong").frame]
    assert stats.deliveries == 0


# The byte budget.


@pytest.mark.parametrize(("spare", "written"), [(0, True), (-1, False)])
async def test_the_transports_backlog_counts_toward_the_budget(
    flusher: Flusher, stats: Stats, spare: int, written: bool
) -> None:
    """Backlog plus the frame up to the budget is written; one byte over closes with 4008, writing nothing."""
    item = publication(1, size=200)
    backlog = 900
    out, sink = outbound(flusher, stats, limit=backlog + len(item.frame) + spare, backlog=backlog)
    out.send(item)
    await end_of_turn()
    if written:
        assert sink.writes == [item.frame]
        assert sink.closes == []
        assert (stats.deliveries, stats.slow_consumer_closes) == (1, 0)
    else:
        assert sink.writes == []
        assert sink.closes == [(*OVERFLOW, b"")]
        assert out.close_request == OVERFLOW
        assert (stats.deliveries, stats.slow_consumer_closes) == (0, 1)


async def test_backlog_plus_the_turns_gathered_frames_over_the_budget_closes_at_the_turns_end(
    flusher: Flusher, stats: Stats
) -> None:
    """Frames gathered while the kernel's backlog grew are not written: 4008 when the turn ends."""
    out, sink = outbound(flusher, stats, limit=200)
    out.send(publication(1))
    sink.transport.backlog = 190
    for seq in (2, 3, 4):
        out.send(publication(seq))
    assert sink.closes == []
    await end_of_turn()
    assert sink.writes == [publication(1).frame]
    assert sink.closes == [(*OVERFLOW, b"")]
    assert (stats.deliveries, stats.slow_consumer_closes) == (1, 1)


async def test_gathering_over_the_budget_closes_at_once(flusher: Flusher, stats: Stats) -> None:
    """With no backlog, frames gathered in one turn past the budget close with 4008 then and there."""
    first, second = publication(2, size=40), publication(3, size=40)
    out, sink = outbound(flusher, stats, limit=first.size + second.size - 1)
    out.send(publication(1))
    out.send(first)
    assert sink.closes == []
    out.send(second)
    assert sink.closes == [(*OVERFLOW, b"")]
    await end_of_turn()
    assert sink.writes == [publication(1).frame]
    assert (stats.deliveries, stats.slow_consumer_closes) == (1, 1)


async def test_one_large_frame_passes_an_empty_buffer(flusher: Flusher, stats: Stats) -> None:
    """A frame larger than the whole budget goes out when nothing else waits: at once, or gathered alone."""
    out, sink = outbound(flusher, stats, limit=100)
    large = [publication(seq, size=500) for seq in (1, 2)]
    for item in large:
        out.send(item)
    await end_of_turn()
    assert sink.writes == [large[0].frame, large[1].frame]
    assert out.close_request is None
    # A second frame gathered with it is over the budget, though.
    for item in (publication(3), publication(4), publication(5, size=500)):
        out.send(item)
    assert out.close_request == OVERFLOW
    await end_of_turn()
    assert sink.writes == [large[0].frame, large[1].frame, publication(3).frame]
    assert stats.slow_consumer_closes == 1


# The close sequence.


async def test_a_closed_outbound_gathers_and_writes_nothing_more(
    flusher: Flusher, stats: Stats
) -> None:
    """After a close request nothing is written, in that turn or later; the close went to the sink once."""
    out, sink = outbound(flusher, stats)
    out.send(publication(1))
    out.close(SLOW_CONSUMER, "slow")
    out.send(publication(2))
    await end_of_turn()
    out.send(publication(3))
    await end_of_turn()
    assert sink.writes == [publication(1).frame]
    assert sink.closes == [(SLOW_CONSUMER, "slow", b"")]
    assert stats.deliveries == 1


async def test_a_close_drops_the_gathered_frames(flusher: Flusher, stats: Stats) -> None:
    """Frames gathered before a close are dropped: nothing goes out after the close frame."""
    out, sink = outbound(flusher, stats)
    for seq in (1, 2, 3):
        out.send(publication(seq))
    out.close(1012, "bye")
    await end_of_turn()
    assert sink.writes == [publication(1).frame]
    assert sink.closes == [(1012, "bye", b"")]
    assert stats.deliveries == 1


async def test_the_first_close_request_wins(flusher: Flusher, stats: Stats) -> None:
    """A drain, an overflow and the client's close after the first request change nothing."""
    out, sink = outbound(flusher, stats)
    out.close(1012, "bye")
    out.close(*OVERFLOW)
    out.peer_gone()
    assert out.close_request == (1012, "bye")
    assert sink.closes == [(1012, "bye", b"")]


async def test_nothing_is_written_after_the_client_closed(flusher: Flusher, stats: Stats) -> None:
    """Once the client closed: no gathered frame, no later frame, and no close frame either."""
    out, sink = outbound(flusher, stats)
    out.send(publication(1))
    out.send(publication(2))
    out.peer_gone()
    out.send(publication(3))
    out.close(1012, "bye")
    await end_of_turn()
    assert out.peer_closed
    assert sink.writes == [publication(1).frame]
    assert sink.closes == []
    assert stats.deliveries == 1


async def test_a_closing_transport_is_not_written(flusher: Flusher, stats: Stats) -> None:
    """A transport already closing (the connection ended it) gets no frame, and nothing counts as delivered."""
    out, sink = outbound(flusher, stats)
    sink.transport.closing = True
    for seq in (1, 2):
        out.send(publication(seq))
    await end_of_turn()
    out.send(publication(3))
    assert sink.writes == []
    assert stats.deliveries == 0


# The handshake's response (the head).


async def test_the_head_goes_out_first_in_the_same_write_as_the_first_frame(
    flusher: Flusher, stats: Stats
) -> None:
    """The 101 response and the first frame share one write; later writes and the close carry no head."""
    out, sink = outbound(flusher, stats, head=HEAD)
    out.send(reply("connection_established"))
    out.send(reply("subscribed"))
    assert sink.writes == [HEAD + reply("connection_established").frame]
    await end_of_turn()
    out.send(publication(1))
    out.close(1012, "bye")
    assert sink.writes == [
        HEAD + reply("connection_established").frame,
        reply("subscribed").frame,
        publication(1).frame,
    ]
    assert sink.closes == [(1012, "bye", b"")]


async def test_the_head_is_the_prefix_of_a_close_that_comes_first(
    flusher: Flusher, stats: Stats
) -> None:
    """A close before any frame hands the 101 response to `close_now` as its prefix, once."""
    out, sink = outbound(flusher, stats, head=HEAD)
    out.close(1008, "Authentication token expired")
    out.send(reply("late"))
    await end_of_turn()
    assert sink.writes == []
    assert sink.closes == [(1008, "Authentication token expired", HEAD)]


async def test_an_overflow_before_any_write_still_sends_the_head_first(
    flusher: Flusher, stats: Stats
) -> None:
    """A first frame refused for the backlog closes with 4008 after the 101 response, not without it."""
    out, sink = outbound(flusher, stats, head=HEAD, limit=100, backlog=100)
    out.send(publication(1))
    assert sink.writes == []
    assert sink.closes == [(*OVERFLOW, HEAD)]


async def test_no_head_goes_out_after_the_client_left(flusher: Flusher, stats: Stats) -> None:
    """A client gone before anything was written gets neither the head nor a close."""
    out, sink = outbound(flusher, stats, head=HEAD)
    out.peer_gone()
    out.send(reply("late"))
    await end_of_turn()
    assert sink.writes == []
    assert sink.closes == []


# The flusher.


async def test_one_failing_connection_does_not_keep_the_others_frames(
    flusher: Flusher, stats: Stats, caplog: pytest.LogCaptureFixture
) -> None:
    """A transport whose write raises is logged; the turn's other gathered frames are still written."""
    (broken, broken_sink), (healthy, healthy_sink) = (outbound(flusher, stats) for _ in range(2))
    for seq in (1, 2):
        broken.send(publication(seq))  # the broken one gathers first, so it is flushed first
        healthy.send(publication(seq))
    broken_sink.transport.failure = RuntimeError("transport gone wrong")
    with caplog.at_level(logging.ERROR, logger="gateway.fanout.outbound"):
        await end_of_turn()
    assert healthy_sink.writes == [publication(1).frame, publication(2).frame]
    assert broken_sink.writes == [publication(1).frame]
    assert "writing gathered frames failed" in caplog.text


async def test_latency_is_observed_after_the_turns_writes(
    flusher: Flusher, stats: Stats, observed: list[float]
) -> None:
    """Each timestamped publication is observed once when the turn ends; one without a timestamp never."""
    out, _ = outbound(flusher, stats)
    for item in (publication(1, published_at=1.0), publication(2)):
        out.send(item)
        flusher.fanned_out(item)
    assert observed == []
    await end_of_turn()
    assert len(observed) == 1
    assert observed[0] > 0
    await end_of_turn()
    assert len(observed) == 1


async def test_a_new_read_writes_what_the_last_one_gathered_then_starts_a_turn(
    flusher: Flusher, stats: Stats
) -> None:
    """`next_turn` writes the gathered frames at once; the next frame is a turn's first; none is written twice."""
    out, sink = outbound(flusher, stats)
    flusher.next_turn()
    for seq in (1, 2, 3):
        out.send(publication(seq))
    assert sink.writes == [publication(1).frame]
    flusher.next_turn()
    assert sink.writes == [publication(1).frame, frames(publication(2), publication(3))]
    out.send(publication(4))
    assert sink.writes[-1] == publication(4).frame
    await end_of_turn()  # the end-of-turn callback was cancelled: it writes nothing again
    assert sink.writes == [
        publication(1).frame,
        frames(publication(2), publication(3)),
        publication(4).frame,
    ]
    assert stats.deliveries == 4


async def test_turns_marked_by_the_fan_in_time_a_lone_message_at_once(
    flusher: Flusher, stats: Stats, observed: list[float]
) -> None:
    """Once reads mark turns, a message with nothing gathered is timed then, without waiting a loop turn."""
    out, _ = outbound(flusher, stats)
    flusher.next_turn()
    lone = publication(1, published_at=1.0)
    out.send(lone)
    flusher.fanned_out(lone)
    assert len(observed) == 1
    # A burst is timed when its gathered frames are written, by the next read.
    flusher.next_turn()
    for seq in (2, 3):
        item = publication(seq, published_at=1.0)
        out.send(item)
        flusher.fanned_out(item)
    assert len(observed) == 2
    flusher.next_turn()
    assert len(observed) == 3
    await end_of_turn()
    assert len(observed) == 3
