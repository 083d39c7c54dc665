"""Reads of an event's history stream and state hash (contract section 4)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Final

from gateway.publication import Publication, parse_publication
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
        async with self._slots:
            values: Any = await self._redis.hmget(state_key(event_id), ["seq", "availableSeats"])
        seq, seats = values
        return EventState(seq=_int_or_none(seq), available_seats=_int_or_none(seats))


def _int_or_none(value: bytes | str | None) -> int | None:
    try:
        return None if value is None else int(value)
    except ValueError:
        return None
