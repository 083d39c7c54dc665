"""`ReplyStream`: a redis-py connection's socket taken over, replies handed on as they arrive.

Against a real Redis server: the connection is made by redis-py, then the
stream reads what the server sends; bytes are also fed by hand where a test
needs them split or malformed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from gateway.fanin.reply_stream import ReplyStream
from tests.support.wait import async_wait_until


@pytest.fixture
async def connection(redis_url: str) -> AsyncIterator[AbstractConnection]:
    """Made as the broker makes it: redis-py connects, the stream takes over."""
    pool = ConnectionPool.from_url(redis_url, protocol=2)
    connection: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
    await connection.connect()  # type: ignore[no-untyped-call]
    yield connection
    await connection.disconnect(nowait=True)
    await pool.disconnect()


async def test_replies_arrive_in_order_from_the_server(
    connection: AbstractConnection, redis: Redis
) -> None:
    """SUBSCRIBE written by the stream is confirmed; published messages follow in order."""
    replies: list[Any] = []
    stream = ReplyStream.take_over(connection, replies.append, lambda: None)
    stream.send("SUBSCRIBE", "booking:event:{41}")
    await async_wait_until(lambda: _async(len(replies) == 1), what="the confirmation")
    for n in range(3):
        await redis.publish("booking:event:{41}", f"m{n}")
    await async_wait_until(lambda: _async(len(replies) == 4), what="three messages")
    assert replies[0] == [b"subscribe", b"booking:event:{41}", 1]
    assert [r[2] for r in replies[1:]] == [b"m0", b"m1", b"m2"]
    stream.close()


async def test_a_reply_split_across_reads_or_several_in_one_are_whole(
    connection: AbstractConnection,
) -> None:
    replies: list[Any] = []
    reads: list[int] = []
    stream = ReplyStream.take_over(connection, replies.append, lambda: reads.append(len(replies)))
    message = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$5\r\nhello\r\n"
    stream.data_received(message[:9])
    assert replies == []
    stream.data_received(message[9:] + b"+PONG\r\n" + message)
    assert replies == [[b"message", b"c", b"hello"], b"PONG", [b"message", b"c", b"hello"]]
    # Each read is announced before its replies: the hub's turn of fan-out.
    assert reads == [0, 0]
    assert not stream.failed.done()
    stream.close()


async def test_an_error_reply_fails_the_stream(connection: AbstractConnection) -> None:
    """Redis refusing a command: the link is no longer trusted, the reason is kept."""
    stream = ReplyStream.take_over(connection, lambda reply: None, lambda: None)
    stream.send("NO-SUCH-COMMAND")
    error = await asyncio.wait_for(stream.failed, 5)
    assert isinstance(error, ResponseError)
    assert "unknown command" in str(error)


async def test_a_callback_that_raises_fails_the_stream(connection: AbstractConnection) -> None:
    def broken(reply: Any) -> None:
        raise ValueError("bug")

    stream = ReplyStream.take_over(connection, broken, lambda: None)
    stream.send("PING")
    error = await asyncio.wait_for(stream.failed, 5)
    assert isinstance(error, ValueError)


async def test_the_server_closing_the_connection_fails_the_stream(
    connection: AbstractConnection, redis: Redis
) -> None:
    stream = ReplyStream.take_over(connection, lambda reply: None, lambda: None)
    stream.send("CLIENT", "SETNAME", "reply-stream-test")
    await async_wait_until(
        lambda: _named(redis, "reply-stream-test"), what="the connection to be named"
    )
    await redis.client_kill_filter(_type="normal", skipme=True)
    error = await asyncio.wait_for(stream.failed, 5)
    assert isinstance(error, (RedisConnectionError, ConnectionError, OSError))


async def _named(redis: Redis, name: str) -> bool:
    return any(client.get("name") == name for client in await redis.client_list())


async def _async(value: bool) -> bool:
    return value
