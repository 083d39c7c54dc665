"""The hub's fan-out to watchers' outbounds, on recording transports.

A watcher in step is handed each publication without a seq check; one out of
step is held while replaying, or checked against its `last_seq`, until it is
in step. What is checked is what each watcher's transport receives, in which
writes, and the closes, counters and latencies that follow. The hub's
subscription bookkeeping is in test_hub_subscriptions.py and
tests/unit/gateway/session/test_sessions.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.fanin.memory_broker import MemoryBroker
from gateway.fanout.hub import Hub, Subscription
from gateway.fanout.outbound import SLOW_CONSUMER, SLOW_CONSUMER_REASON, Flusher, Outbound
from gateway.fanout.stats import Stats
from tests.support.outbounds import (
    LIMIT_BYTES,
    RecordingSink,
    frames,
    outbound,
    publication,
    reply,
)
from tests.support.wait import scheduled_callbacks_run

OVERFLOW = (SLOW_CONSUMER, SLOW_CONSUMER_REASON, b"")


@dataclass
class Watcher:
    subscription: Subscription
    outbound: Outbound
    sink: RecordingSink


class Fanout:
    """A hub on the in-process broker, its flusher and stats, and watchers of its events."""

    def __init__(self, hold_limit: int = LIMIT_BYTES) -> None:
        self.stats = Stats()
        self.flusher = Flusher(self._observe)
        self.broker = MemoryBroker()
        self.hub = Hub(self.broker, hold_limit, self.flusher, self.stats)
        self.sinks: list[RecordingSink] = []
        # Latencies observed, and how many writes all watchers had received by then.
        self.observed: list[float] = []
        self.writes_when_observed: list[int] = []

    def _observe(self, seconds: float) -> None:
        self.observed.append(seconds)
        self.writes_when_observed.append(sum(len(sink.writes) for sink in self.sinks))

    async def watcher(
        self, last_seq: int = 0, *, limit: int = LIMIT_BYTES, live: bool = True, event_id: int = 1
    ) -> Watcher:
        """A subscribed watcher starting after `last_seq`: live, or still replaying."""
        out, sink = outbound(self.flusher, self.stats, limit=limit)
        self.sinks.append(sink)
        subscription = Subscription(event_id, out, last_seq)
        await self.hub.subscribe(subscription)
        if live:
            subscription.go_live()
        return Watcher(subscription, out, sink)

    def publish(self, *seqs: int) -> None:
        for seq in seqs:
            self.hub.handle_publication(publication(seq))

    async def steady(self) -> None:
        """Fan seq 1 out and end the turn: every live watcher from seq 0 is then in step."""
        self.publish(1)
        await end_of_turn()


async def end_of_turn() -> None:
    """Until the flusher's end-of-turn callback (scheduled with `call_soon`) has run."""
    await scheduled_callbacks_run()


# Turns and writes.


async def test_a_burst_costs_each_watcher_two_writes_in_order() -> None:
    """Fifty messages in one turn: each watcher gets the first at once, the other 49 in one write."""
    fanout = Fanout()
    watchers = [await fanout.watcher() for _ in range(3)]
    burst = [publication(seq) for seq in range(1, 51)]
    for item in burst:
        fanout.hub.handle_publication(item)
    assert all(w.sink.writes == [burst[0].frame] for w in watchers)
    await end_of_turn()
    assert all(w.sink.writes == [burst[0].frame, frames(*burst[1:])] for w in watchers)
    assert fanout.stats.deliveries == 150


async def test_each_turn_starts_with_a_write_at_once() -> None:
    """Paced messages, one per turn, each go out at once: one write per message per watcher."""
    fanout = Fanout()
    watcher = await fanout.watcher()
    for seq in range(1, 4):
        fanout.publish(seq)
        assert len(watcher.sink.writes) == seq
        await end_of_turn()
    assert watcher.sink.writes == [publication(seq).frame for seq in range(1, 4)]


async def test_latency_is_observed_once_per_message_not_per_watcher() -> None:
    """Ten watchers, three timestamped messages: three observations, each after every watcher's writes."""
    fanout = Fanout()
    for _ in range(10):
        await fanout.watcher()
    for seq in range(1, 4):
        fanout.hub.handle_publication(publication(seq, published_at=1.0))
    fanout.hub.handle_publication(publication(4, published_at=None))
    assert fanout.observed == []
    await end_of_turn()
    assert len(fanout.observed) == 3
    assert all(seconds > 0 for seconds in fanout.observed)
    assert fanout.writes_when_observed == [20, 20, 20]  # two writes each, all done


async def test_turns_marked_by_the_fan_in_need_no_callback_per_message() -> None:
    """Each read starts a turn: a lone message is timed at once, a burst coalesced until the next read."""
    fanout = Fanout()
    watcher = await fanout.watcher()
    hub = fanout.hub
    for seq in (1, 2):
        hub.input_arrived()
        hub.handle_publication(publication(seq, published_at=1.0))
        assert len(fanout.observed) == seq  # timed at once: nothing was gathered
    hub.input_arrived()
    for seq in (3, 4, 5):
        hub.handle_publication(publication(seq, published_at=1.0))
    assert watcher.sink.writes[-1] == publication(3).frame
    assert len(fanout.observed) == 3
    # The next read writes what the last one gathered before anything of its own.
    hub.input_arrived()
    assert watcher.sink.writes[-1] == frames(publication(4), publication(5))
    assert len(fanout.observed) == 5  # seqs 1 to 5, each once
    await end_of_turn()
    assert len(fanout.observed) == 5
    assert watcher.sink.writes == [publication(seq).frame for seq in (1, 2, 3)] + [
        frames(publication(4), publication(5))
    ]


async def test_a_publication_of_an_unwatched_event_reaches_nobody() -> None:
    """A watcher of event 1 gets nothing of event 2, and an unwatched message is not timed."""
    fanout = Fanout()
    watcher = await fanout.watcher()
    fanout.hub.handle_publication(publication(1, published_at=1.0, event_id=2))
    await end_of_turn()
    assert watcher.sink.writes == []
    assert fanout.observed == []


# The byte budget.


async def test_a_turn_over_the_budget_closes_only_that_client() -> None:
    """Backlog plus the turn's frames over the budget: 4008 for that client, the others written."""
    fanout = Fanout()
    slow, fast = [await fanout.watcher(limit=200) for _ in range(2)]
    fanout.publish(1)
    slow.sink.transport.backlog = 190
    fanout.publish(2, 3, 4)
    await end_of_turn()
    assert slow.sink.writes == [publication(1).frame]
    assert slow.sink.closes == [OVERFLOW]
    assert fast.sink.writes == [publication(1).frame, frames(*map(publication, (2, 3, 4)))]
    assert fast.sink.closes == []
    assert fanout.stats.slow_consumer_closes == 1
    assert fanout.stats.deliveries == 1 + 4


async def test_a_backlog_over_the_budget_closes_a_watcher_in_step() -> None:
    """In step, a publication still passes the budget: over it 4008 and no write; under it, written."""
    fanout = Fanout()
    slow, steady = [await fanout.watcher(limit=200) for _ in range(2)]
    await fanout.steady()
    assert slow.subscription.in_step
    assert steady.subscription.in_step
    slow.sink.transport.backlog = 190
    steady.sink.transport.backlog = 10
    fanout.publish(2)
    assert slow.sink.writes == [publication(1).frame]
    assert slow.sink.closes == [OVERFLOW]
    assert steady.sink.writes == [publication(1).frame, publication(2).frame]
    assert (fanout.stats.deliveries, fanout.stats.slow_consumer_closes) == (3, 1)


async def test_hold_over_the_budget_closes_with_4008() -> None:
    """A replaying watcher whose held publications pass the hold budget is closed with 4008, alone."""
    held = [publication(seq, size=50) for seq in (1, 2)]
    fanout = Fanout(hold_limit=held[0].size + held[1].size - 1)
    replaying = await fanout.watcher(live=False)
    live = await fanout.watcher()
    fanout.hub.handle_publication(held[0])
    assert replaying.sink.closes == []
    fanout.hub.handle_publication(held[1])
    assert replaying.sink.closes == [OVERFLOW]
    replaying.subscription.go_live()
    await end_of_turn()
    assert replaying.sink.writes == []
    assert live.sink.writes == [held[0].frame, held[1].frame]
    assert live.sink.closes == []


async def test_a_hold_overflow_counts_as_a_slow_consumer_close() -> None:
    """Every 4008 is a slow-consumer disconnect for /metrics, a hold overflow's too."""
    fanout = Fanout(hold_limit=10)
    replaying = await fanout.watcher(live=False)
    fanout.publish(1)
    assert replaying.sink.closes == [OVERFLOW]
    assert fanout.stats.slow_consumer_closes == 1


# In step and out of step.


async def test_a_watcher_is_in_step_after_its_first_fan_out() -> None:
    """The first publication is checked against last_seq; from then on it is handed on in step."""
    fanout = Fanout()
    watcher = await fanout.watcher()
    subscription = watcher.subscription
    assert not subscription.in_step  # nothing fanned out yet: where it stands is unknown
    fanout.publish(1)
    assert subscription.in_step
    await end_of_turn()
    fanout.publish(2)
    assert watcher.sink.writes == [publication(1).frame, publication(2).frame]
    assert fanout.stats.deliveries == 2
    assert fanout.hub.recovery_floor(1) == 2
    # A reply in the next turn goes out at once: nothing waits.
    await end_of_turn()
    watcher.outbound.send(reply("pong"))
    assert watcher.sink.writes[-1] == reply("pong").frame


async def test_unsubscribing_a_watcher_in_step_brings_its_last_seq_up_to_date() -> None:
    """A watcher handed 2 and 3 in step leaves with last_seq 3, out of step."""
    fanout = Fanout()
    watcher = await fanout.watcher()
    fanout.publish(1, 2, 3)
    assert watcher.subscription.in_step
    fanout.hub.unsubscribe(watcher.subscription)
    assert not watcher.subscription.in_step
    assert watcher.subscription.last_seq == 3
    assert fanout.broker.subscribed == set()


async def test_gathered_frames_are_never_overtaken() -> None:
    """Replies gathered this turn go out before a publication handed on in step after them."""
    fanout = Fanout()
    watcher = await fanout.watcher()
    await fanout.steady()
    watcher.outbound.send(reply("first"))
    watcher.outbound.send(reply("second"))
    assert watcher.subscription.in_step
    fanout.publish(2)
    assert watcher.sink.writes == [publication(1).frame, reply("first").frame]
    await end_of_turn()
    assert watcher.sink.writes[-1] == frames(reply("second"), publication(2))
    assert fanout.stats.deliveries == 2


async def test_a_burst_keeps_a_watcher_in_step() -> None:
    """Three messages in one turn: one write at once, two joined; the watcher stays in step."""
    fanout = Fanout()
    watcher = await fanout.watcher()
    await fanout.steady()
    fanout.publish(2, 3, 4)
    assert watcher.subscription.in_step
    await end_of_turn()
    assert watcher.sink.writes == [
        publication(1).frame,
        publication(2).frame,
        frames(publication(3), publication(4)),
    ]
    fanout.hub.unsubscribe(watcher.subscription)
    assert watcher.subscription.last_seq == 4


async def test_a_closed_or_closing_connection_gets_nothing() -> None:
    """In step, a closed outbound or a transport closing under it: no write, no error, no delivery."""
    fanout = Fanout()
    closed, closing = [await fanout.watcher() for _ in range(2)]
    await fanout.steady()
    closed.outbound.close(1000, "")
    closing.sink.transport.closing = True
    fanout.publish(2)
    await end_of_turn()
    assert closed.sink.writes == [publication(1).frame]
    assert closing.sink.writes == [publication(1).frame]
    assert fanout.stats.deliveries == 2


async def test_a_watcher_that_left_is_not_written() -> None:
    """An unsubscribed watcher gets nothing more, though its connection stays open."""
    fanout = Fanout()
    left, stays = [await fanout.watcher() for _ in range(2)]
    await fanout.steady()
    fanout.hub.unsubscribe(left.subscription)
    assert not left.subscription.in_step
    fanout.publish(2)
    await end_of_turn()
    assert left.sink.writes == [publication(1).frame]
    assert stays.sink.writes == [publication(1).frame, publication(2).frame]
    assert fanout.broker.subscribed == {1}


async def test_a_replay_ahead_of_the_live_stream_is_not_repeated() -> None:
    """A watcher that read up to seq 5 gets neither 4 nor 5 again; 5 brings it in step, 6 and 7 follow."""
    fanout = Fanout()
    watcher = await fanout.watcher(last_seq=5)
    fanout.publish(4)
    await end_of_turn()
    assert not watcher.subscription.in_step  # ahead of the stream: checked
    fanout.publish(5)
    await end_of_turn()
    assert watcher.subscription.in_step  # it has exactly what was fanned out
    assert watcher.sink.writes == []
    fanout.publish(6)
    await end_of_turn()
    fanout.publish(7)
    assert watcher.sink.writes == [publication(6).frame, publication(7).frame]
    assert fanout.hub.recovery_floor(1) == 7


async def test_a_watcher_behind_the_stream_is_checked_then_in_step() -> None:
    """Joining at seq 1 when 2 was fanned out: not in step; 3 is delivered and brings it in step."""
    fanout = Fanout()
    await fanout.watcher()
    fanout.publish(1, 2)
    await end_of_turn()
    late = await fanout.watcher(last_seq=1)
    assert not late.subscription.in_step
    fanout.publish(3)
    assert late.subscription.in_step
    assert late.sink.writes == [publication(3).frame]


async def test_a_watcher_joining_at_the_latest_seq_is_in_step_at_once() -> None:
    """A watcher whose state is the last seq fanned out is handed the next one in step."""
    fanout = Fanout()
    await fanout.watcher()
    fanout.publish(1, 2)
    joined = await fanout.watcher(last_seq=2)
    assert joined.subscription.in_step
    fanout.publish(3)
    await end_of_turn()
    assert joined.sink.writes == [publication(3).frame]


async def test_held_publications_go_out_after_the_replay_without_duplicates() -> None:
    """A replaying watcher holds live messages, then sends only those newer than its replay, in order."""
    fanout = Fanout()
    watcher = await fanout.watcher(last_seq=4, live=False)
    fanout.publish(6, 7, 8)
    await end_of_turn()
    assert watcher.sink.writes == []
    assert not watcher.subscription.in_step
    for seq in (5, 6, 7):  # the replay from history
        watcher.subscription.deliver(publication(seq))
    watcher.subscription.go_live()
    assert watcher.subscription.in_step
    fanout.publish(9)
    await end_of_turn()
    assert b"".join(watcher.sink.writes) == frames(*map(publication, range(5, 10)))
    assert watcher.sink.writes[0] == publication(5).frame
    assert fanout.stats.deliveries == 5


async def test_going_live_before_any_fan_out_is_in_step_after_the_first() -> None:
    """With nothing fanned out yet, going live is not yet in step; the first publication decides."""
    fanout = Fanout()
    watcher = await fanout.watcher(live=False)
    watcher.subscription.go_live()
    assert not watcher.subscription.in_step
    fanout.publish(1)
    assert watcher.subscription.in_step
    assert watcher.sink.writes == [publication(1).frame]


# The recovery floor.


async def test_recovery_floor_is_the_lowest_seq_a_watcher_is_known_to_have() -> None:
    """In step counts as the latest fanned-out seq, out of step its own; unknown ones do not count."""
    fanout = Fanout()
    hub = fanout.hub
    assert hub.recovery_floor(1) is None  # nobody watches
    unknown = await fanout.watcher(last_seq=-1, live=False)
    assert hub.recovery_floor(1) is None
    in_step = await fanout.watcher()
    fanout.publish(1, 2, 3)
    assert in_step.subscription.in_step
    assert hub.recovery_floor(1) == 3
    replaying = await fanout.watcher(last_seq=2, live=False)
    assert hub.recovery_floor(1) == 2
    hub.unsubscribe(replaying.subscription)
    hub.unsubscribe(unknown.subscription)
    assert hub.recovery_floor(1) == 3
