"""The end of a loop turn: every connection's gathered frames written at once.

A writer writes its first frame of a loop turn at once. What follows in the
same turn (a burst read from Redis in one go, or replies) is gathered: the
writer joins the flusher's list, and one callback per loop turn, not one per
connection, writes each listed writer's frames with a single `write()`. A
burst so costs two system calls per watcher instead of one per message, and a
lone message one write per watcher and nothing else.

The delivery-latency histogram is observed here once per message, after the
writes it caused: once per delivery, it cost about as much as the fan-out
itself (issue 4's profile).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from gateway.publication import Publication

logger = logging.getLogger(__name__)


class Flushable(Protocol):
    """A connection's writer holding frames gathered during this loop turn."""

    def flush(self) -> None: ...


class Flusher:
    """One callback per loop turn that writes what the turn gathered."""

    def __init__(self, observe_latency: Callable[[float], None]) -> None:
        self._observe_latency = observe_latency
        # Writers with frames gathered this turn, each listed once.
        self._writers: list[Flushable] = []
        # Live publications fanned out this turn, to be timed once each.
        self._published: list[Publication] = []
        self._scheduled: asyncio.Handle | None = None
        # True once the broker marks turns itself (`next_turn`): a message with nothing
        # gathered is then timed at once, with no callback of its own.
        self._driven = False
        # Counts turns: a writer that wrote in the current turn gathers what follows.
        self.turn = 0

    def gathered(self, writer: Flushable) -> None:
        """`writer` got its first frame of this turn: write its frames at the turn's end."""
        self._writers.append(writer)
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

        The broker calls this for every chunk it reads from Redis, so that a
        lone message needs no callback at the end of its loop turn (routing).
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
        writers, self._writers = self._writers, []
        for writer in writers:
            try:
                writer.flush()
            except Exception:
                # One broken connection must not keep the frames of the others.
                logger.exception("writing gathered frames failed")
        published, self._published = self._published, []
        if published:
            now = time.time()
            for publication in published:
                if publication.published_at is not None:
                    self._observe_latency(now - publication.published_at)
