"""A connected redis-py connection's socket, taken over: replies handed on as bytes arrive.

redis-py connects (TCP, TLS or a Unix socket, AUTH, CLIENT SETINFO), then
this protocol replaces its stream reader on the same transport. Each chunk
Redis sends is fed to hiredis in `data_received` and every complete reply is
passed to a callback there and then. redis-py's `read_response` costs a
future, a task switch and four coroutine frames per read: with many events
and few watchers each, that is the largest cost per message after the
writes themselves.

This is the one module that reads a private attribute of redis-py (the
connection's `_writer`, to reach its transport): `redis_connection_transport`
is checked by tests/unit/fanin/test_reply_stream.py, which fails loudly when
an upgrade changes it, and pyproject.toml bounds redis-py's version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

ReplyHandler = Callable[[Any], None]
ChunkHandler = Callable[[], None]


class ReplyStream(asyncio.Protocol):
    """Replies of one Redis connection, parsed as they arrive; commands written at once."""

    def __init__(
        self, connection: AbstractConnection, on_reply: ReplyHandler, on_chunk: ChunkHandler
    ) -> None:
        self._connection = connection
        self._on_reply = on_reply
        self._on_chunk = on_chunk
        self._parser = hiredis.Reader()
        # Resolved with the reason once the connection is lost or a reply is unusable (a
        # result, not an exception: a closed stream nobody waits on logs nothing).
        self.failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self._transport = redis_connection_transport(connection)

    @classmethod
    def take_over(
        cls, connection: AbstractConnection, on_reply: ReplyHandler, on_chunk: ChunkHandler
    ) -> ReplyStream:
        """Serve `connection`'s replies from now on; it must have no reply outstanding.

        `on_chunk` is called before the replies of each read, `on_reply` with each.
        """
        stream = cls(connection, on_reply, on_chunk)
        stream._transport.set_protocol(stream)
        return stream

    def send(self, *args: str | bytes) -> None:
        """Write one command; its reply arrives through the callback like any other."""
        if not self._transport.is_closing():
            self._transport.write(b"".join(self._connection.pack_command(*args)))

    def close(self) -> None:
        self._transport.abort()
        self.fail(RedisConnectionError("the pub/sub connection was closed"))

    def fail(self, error: BaseException) -> None:
        if not self.failed.done():
            self.failed.set_result(error)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        try:
            self._on_chunk()
            parser.feed(data)
            while (reply := parser.gets()) is not False:
                if isinstance(reply, hiredis.ReplyError):
                    raise ResponseError(str(reply))
                self._on_reply(reply)
        except Exception as error:
            # A broken stream, or a callback that failed: the link is no longer trustworthy.
            self._transport.abort()
            self.fail(error)

    def eof_received(self) -> bool:
        return False  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or RedisConnectionError("Redis closed the pub/sub connection"))


def redis_connection_transport(connection: AbstractConnection) -> asyncio.Transport:
    """The transport under a connected redis-py connection (its private stream writer's)."""
    writer = getattr(connection, "_writer", None)
    if writer is None:
        raise RedisConnectionError("the connection is not connected")
    return cast(asyncio.Transport, writer.transport)
