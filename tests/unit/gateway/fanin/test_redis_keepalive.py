"""The Redis link's keepalive: a link busy with a burst is alive.

This drives the link's reply handling directly (no Redis): the race it pins,
a PONG queued behind a burst while the keepalive ticks, cannot be produced
on demand against a real server, whose replies a loop reads in one go.
"""

from __future__ import annotations

import asyncio

from gateway.fanin.history import History
from gateway.fanin.redis_broker import SUBSCRIBE, RedisBroker, _Link
from gateway.fanout.stats import Stats
from shared.channels import event_channel


class SentCommands:
    """Stands in for a link's `ReplyStream`: records what the broker writes."""

    def __init__(self) -> None:
        self.sent: list[tuple[str | bytes, ...]] = []

    def send(self, *args: str | bytes) -> None:
        self.sent.append(args)


async def test_any_pubsub_reply_counts_as_keepalive_answer() -> None:
    """A link busy with a burst is alive: a reply read after the PING clears the missing-PONG flag.

    Before, only the PONG cleared it, and the PONG waited behind every message of
    a burst, so the keepalive dropped a healthy link ('Redis did not answer PING').
    """
    broker = RedisBroker("redis://127.0.0.1:1", History(None), Stats())  # type: ignore[arg-type]
    link = _Link()
    link.stream = SentCommands()  # type: ignore[assignment]
    link.request(SUBSCRIBE, [5])
    link.awaiting_pong = True
    broker._on_reply(link, [b"subscribe", event_channel(5).encode(), 1])
    assert link.awaiting_pong is False
    # Also while a gap fill holds the replies back: they prove the link alive all the same.
    link.awaiting_pong = True
    gap_fill = asyncio.Event()
    link.catching_up = asyncio.create_task(gap_fill.wait())  # a history read in progress
    broker._on_reply(link, [b"message", event_channel(5).encode(), b"{}"])
    assert link.awaiting_pong is False
    assert len(link.backlog) == 1
    gap_fill.set()
    await link.catching_up
