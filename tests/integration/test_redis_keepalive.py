"""The broker's keepalive against a Redis that is busy: a link that keeps sending is alive.

A scripted Redis on a real socket confirms the subscription, then streams
messages and never answers PING: exactly what a real Redis looks like while
a burst is queued ahead of the PONG. The broker must take any reply after
its PING as proof of life, and keep the one link; when the link goes truly
silent, the keepalive must give it up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from gateway.fanin.history import History
from gateway.fanin.redis_broker import RedisBroker
from gateway.fanout.publication import Publication
from gateway.fanout.stats import Stats
from shared.channels import event_channel
from tests.support.wait import async_wait_until

EVENT = 5
KEEPALIVE_SECONDS = 0.05


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class ScriptedRedis:
    """Answers connection setup and SUBSCRIBE; sends messages while `streaming`; ignores PING."""

    def __init__(self) -> None:
        self.connections = 0
        self.pings = 0
        self.streaming = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        channel = event_channel(EVENT).encode()
        streamer: asyncio.Task[None] | None = None
        try:
            while command := await _command(reader):
                name = command[0].upper()
                if name == b"SUBSCRIBE":
                    for subscribed in command[1:]:
                        writer.write(b"*3\r\n" + bulk(b"subscribe") + bulk(subscribed) + b":1\r\n")
                    streamer = asyncio.create_task(self._stream(writer, channel))
                elif name == b"PING":
                    self.pings += 1  # busy: the PONG never comes
                else:
                    writer.write(b"+OK\r\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if streamer is not None:
                streamer.cancel()
            writer.close()

    async def _stream(self, writer: asyncio.StreamWriter, channel: bytes) -> None:
        seq = 0
        while True:
            await self.streaming.wait()
            seq += 1
            payload = orjson.dumps({"eventId": EVENT, "seq": seq})
            writer.write(b"*3\r\n" + bulk(b"message") + bulk(channel) + bulk(payload))
            await asyncio.sleep(KEEPALIVE_SECONDS / 5)  # poll: the stream's own pace


async def _command(reader: asyncio.StreamReader) -> list[bytes]:
    header = await reader.readline()
    if not header:
        return []
    assert header.startswith(b"*"), header
    parts = []
    for _ in range(int(header[1:])):
        size = int((await reader.readline())[1:])
        parts.append((await reader.readexactly(size + 2))[:-2])
    return parts


class Recorder:
    def __init__(self) -> None:
        self.seqs: list[int] = []

    def handle_publication(self, publication: Publication) -> None:
        self.seqs.append(publication.seq)

    def recovery_floor(self, event_id: int) -> int | None:
        return None

    def input_arrived(self) -> None:
        return None


@pytest.fixture
async def redis_stub() -> AsyncIterator[tuple[ScriptedRedis, RedisBroker, Recorder]]:
    stub = ScriptedRedis()
    port = await stub.start()
    broker = RedisBroker(
        f"redis://127.0.0.1:{port}",
        History(None),
        Stats(),
        keepalive_interval=KEEPALIVE_SECONDS,  # type: ignore[arg-type]
    )
    recorder = Recorder()
    task = asyncio.create_task(broker.run(recorder))  # type: ignore[arg-type]
    try:
        await broker.subscribe(EVENT)
        yield stub, broker, recorder
    finally:
        task.cancel()
        await asyncio.wait([task])
        await broker.close()
        await stub.close()


async def test_a_link_that_streams_messages_is_kept_without_a_pong(
    redis_stub: tuple[ScriptedRedis, RedisBroker, Recorder],
) -> None:
    """Messages after an unanswered PING prove the link alive: many PINGs later, still one link."""
    stub, broker, recorder = redis_stub
    stub.streaming.set()

    async def several_pings_went_unanswered() -> bool:
        return stub.pings >= 6

    await async_wait_until(several_pings_went_unanswered, timeout=10, what="six PINGs")
    assert stub.connections == 1
    assert broker.connected
    assert recorder.seqs == list(range(1, len(recorder.seqs) + 1))


async def test_a_silent_link_is_given_up_and_made_again(
    redis_stub: tuple[ScriptedRedis, RedisBroker, Recorder],
) -> None:
    """A link that answers nothing after a PING is dropped by the keepalive and reconnected."""
    stub, _broker, _recorder = redis_stub

    async def reconnected() -> bool:
        return stub.connections >= 2

    await async_wait_until(reconnected, timeout=10, what="a second connection")
