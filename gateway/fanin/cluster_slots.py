"""Which Redis Cluster master owns a channel: the slot map, read with `CLUSTER SLOTS`.

The `{eventId}` hash tag in every event name puts an event's channel, history
and state in one slot, so the master owning the channel's slot is the one a
sharded subscription must go to.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import RedisError

Address = tuple[str, int]


@dataclass(frozen=True)
class SlotMap:
    """Slot ranges and their masters, sorted by first slot."""

    # (first slot, last slot, master address), ascending.
    ranges: tuple[tuple[int, int, Address], ...]
    _starts: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", [first for first, _, _ in self.ranges])

    def owner(self, key: str) -> Address | None:
        """The master serving `key`'s slot; None when no master covers it."""
        slot = key_slot(key.encode())
        index = bisect.bisect_right(self._starts, slot) - 1
        if index < 0:
            return None
        first, last, address = self.ranges[index]
        return address if first <= slot <= last else None

    def primaries(self) -> frozenset[Address]:
        return frozenset(address for _, _, address in self.ranges)


def parse_cluster_slots(reply: Any) -> SlotMap:
    """The map in a RESP2 `CLUSTER SLOTS` reply: [[first, last, [host, port, id], replicas…]…]."""
    ranges = []
    for entry in reply or []:
        first, last, master = int(entry[0]), int(entry[1]), entry[2]
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        ranges.append((first, last, (host, int(master[1]))))
    return SlotMap(tuple(sorted(ranges)))


async def fetch_slot_map(
    seeds: Iterable[Address], *, password: str | None, username: str | None, timeout: float
) -> SlotMap:
    """The slot map from the first seed that answers with one; the last error otherwise."""
    error: Exception = ConnectionError("no Redis Cluster node to ask")
    for host, port in seeds:
        client = Redis(
            host=host,
            port=port,
            username=username,
            password=password,
            protocol=2,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
        )
        try:
            async with asyncio.timeout(timeout):
                reply = await client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
                slots = parse_cluster_slots(reply)
            if slots.ranges:
                return slots
            error = ConnectionError(f"{host}:{port} knows no slots yet")
        except (RedisError, OSError, TimeoutError) as failure:
            error = failure
        finally:
            await client.aclose()
    raise error
