"""Reads of an event's history stream and state hash (contract section 4)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Final

from gateway.fanout.publication import Publication, parse_publication
from shared.channels import history_key, state_key
from shared.redis_connect import AnyRedis

# Reads in flight at once. redis-py's pool refuses (rather than queues) a command
# past its 100 connections, so a burst of subscribes must wait its turn here.
MAX_CONCURRENT_READS: Final = 64

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EventState:
    """The event's latest `seq` and `availableSeats` as Redis knows them; None when unknown."""

    seq: int | None
    available_seats: int | None


class History:
    """Read publications back from the history stream, whose entry ids are `<seq>-0`."""

    def __init__(self, redis: AnyRedis, max_concurrent: int = MAX_CONCURRENT_READS) -> None:
        self._redis = redis
        self._slots = asyncio.Semaphore(max_concurrent)
        # event id -> callers of `state` waiting for the next read.
        self._queued: dict[int, list[asyncio.Future[EventState]]] = {}
        # event id -> the task answering them, while there are any.
        self._readers: dict[int, asyncio.Task[None]] = {}

    async def read(
        self, event_id: int, first_seq: int, last_seq: int | None = None
    ) -> list[Publication]:
        """Stored publications with `first_seq <= seq <= last_seq` (None: to the end), in order."""
        if last_seq is not None and last_seq < first_seq:
            return []
        end = "+" if last_seq is None else f"{last_seq}-0"
        async with self._slots:
            entries: Any = await self._redis.xrange(
                history_key(event_id), min=f"{first_seq}-0", max=end
            )
        publications = []
        for entry_id, fields in entries or []:
            publication = parse_publication((fields or {}).get(b"payload", b""))
            if publication is None or publication.event_id != event_id:
                logger.warning(
                    "skipping a malformed history entry",
                    extra={"eventId": event_id, "entry": str(entry_id)},
                )
                continue
            publications.append(publication)
        return publications

    async def state(self, event_id: int) -> EventState:
        """The event's state, read from Redis after this call began.

        Callers of one event share reads: while one HMGET is in flight, later
        callers queue for the next, which is sent once it returns and answers
        all of them. A connect storm on a popular event so costs a few reads,
        not one per subscriber.

        Still gap-free: a session registers its watch in the hub before it
        asks, and a caller only ever gets a read sent after it asked. Redis
        updates the state and publishes in one script, so a publication is
        either in the state read (and then dropped by seq) or arrives after it
        (and is held, then delivered).
        """
        waiter: asyncio.Future[EventState] = asyncio.get_running_loop().create_future()
        queued = self._queued.get(event_id)
        if queued is None:
            self._queued[event_id] = [waiter]
            if event_id not in self._readers:
                self._readers[event_id] = asyncio.create_task(
                    self._read_states(event_id), name=f"state-reads-{event_id}"
                )
        else:
            queued.append(waiter)
        return await waiter

    async def _read_states(self, event_id: int) -> None:
        """Answer the event's queued callers, one HMGET per batch, until none are left."""
        waiters: list[asyncio.Future[EventState]] = []
        try:
            while waiters := self._queued.pop(event_id, []):
                try:
                    state = await self._read_state(event_id)
                except Exception as error:  # every caller of this batch gets the error
                    _settle(waiters, error=error)
                else:
                    _settle(waiters, state=state)
                waiters = []
        except asyncio.CancelledError:
            _settle(waiters + self._queued.pop(event_id, []), error=HistoryClosed())
            raise
        finally:
            self._readers.pop(event_id, None)

    async def _read_state(self, event_id: int) -> EventState:
        async with self._slots:
            values: Any = await self._redis.hmget(state_key(event_id), ["seq", "availableSeats"])
        seq, seats = values
        return EventState(seq=_int_or_none(seq), available_seats=_int_or_none(seats))

    async def aclose(self) -> None:
        """Stop the state reads in flight; their callers get `HistoryClosed`."""
        readers = list(self._readers.values())
        for reader in readers:
            reader.cancel()
        if readers:
            await asyncio.wait(readers)


class HistoryClosed(ConnectionError):
    """The replica is shutting down: a state read was abandoned."""


def _settle(
    waiters: list[asyncio.Future[EventState]],
    state: EventState | None = None,
    error: BaseException | None = None,
) -> None:
    for waiter in waiters:
        if waiter.done():  # its caller was cancelled meanwhile
            continue
        if error is not None:
            waiter.set_exception(error)
        else:
            assert state is not None
            waiter.set_result(state)


def _int_or_none(value: bytes | str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None
