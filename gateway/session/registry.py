"""The open sessions of one replica: what admission counts and what the drain waits for."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Protocol


class Closable(Protocol):
    def close(self, code: int, reason: str) -> None: ...


class Sessions:
    """A set of sessions, with the replica's connection limit and its draining flag."""

    def __init__(self, max_connections: int | None) -> None:
        self._max_connections = max_connections
        self._open: set[Closable] = set()
        # Set while no session is open; the drain waits on it.
        self.idle = asyncio.Event()
        self.idle.set()
        # True from SIGTERM on: not ready, no new connections.
        self.draining = False

    def add(self, session: Closable) -> None:
        self._open.add(session)
        self.idle.clear()

    def remove(self, session: Closable) -> None:
        self._open.discard(session)
        if not self._open:
            self.idle.set()

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[Closable]:
        return iter(list(self._open))

    @property
    def full(self) -> bool:
        limit = self._max_connections
        return limit is not None and len(self._open) >= limit
