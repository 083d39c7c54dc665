"""Regressions found while benchmarking fan-out (issue 4), and the WS_IMPL=fast writer path."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from gateway.broker_redis import SUBSCRIBE, RedisBroker, _Link
from gateway.fastws import text_frame
from gateway.flusher import Flusher
from gateway.frame_writer import FrameWriter
from gateway.history import History
from gateway.metrics import Stats
from gateway.publication import Outgoing, Publication, outgoing
from gateway.writer import SLOW_CONSUMER, Writer
from shared.channels import event_channel
from tests.support.sinks import RecordingSink, RecordingSocket
from tests.support.wait import scheduled_callbacks_run


class SentCommands:
    """Stands in for a link's `ReplyStream`: records what the broker writes."""

    def __init__(self) -> None:
        self.sent: list[tuple[str | bytes, ...]] = []

    def send(self, *args: str | bytes) -> None:
        self.sent.append(args)


def _publication(seq: int, size: int = 10) -> Publication:
    data = orjson.dumps({"eventId": 1, "seq": seq, "pad": "x" * size})
    return Publication(data, event_id=1, seq=seq)


def _fast_writer(sink: RecordingSink, limit: int = 1 << 20) -> tuple[FrameWriter, Stats]:
    stats = Stats()
    writer = FrameWriter(sink, limit, stats, Flusher(float))  # type: ignore[arg-type]
    return writer, stats


async def _next_turn() -> None:
    """Until the flusher, scheduled with `call_soon`, has written this turn's frames."""
    await scheduled_callbacks_run()


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


async def test_writer_sends_no_close_after_the_client_closed() -> None:
    """After the client's close the writer ends without a close of its own.

    uvicorn refuses a `websocket.close` once the client closed ('Unexpected ASGI
    message websocket.close'), which the websockets implementation logged for
    every client of a mass close.
    """
    socket = RecordingSocket()
    writer = Writer(socket, 1 << 20, Stats(), 1.0)
    task = asyncio.create_task(writer.run())
    writer.peer_gone()
    await asyncio.wait_for(task, timeout=5)
    assert socket.closes == []
    assert writer.offer(outgoing({"type": "pong"})) is False


async def test_writer_still_closes_when_the_server_asks_first() -> None:
    """A server-side close request (e.g. a drain) still sends its close frame."""
    socket = RecordingSocket()
    writer = Writer(socket, 1 << 20, Stats(), 1.0)
    task = asyncio.create_task(writer.run())
    writer.close(1012, "bye")
    await asyncio.wait_for(task, timeout=5)
    assert socket.closes == [(1012, "bye")]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000])
def test_text_frame_parses_as_one_unmasked_text_frame(size: int) -> None:
    """`text_frame` builds what a WebSocket client reads back as exactly that text."""
    payload = ("é" * (size // 2) + "a" * (size % 2)).encode()
    reader = StreamReader()
    reader.feed_data(text_frame(payload))
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    assert frame.opcode is Opcode.TEXT
    assert frame.fin
    assert frame.data == payload


async def test_fast_writer_writes_the_first_frame_then_coalesces_the_turn() -> None:
    """A turn's first frame goes out at once; the rest of the turn as one `write()`, in order."""
    sink = RecordingSink()
    writer, stats = _fast_writer(sink)
    frames: list[Outgoing] = [_publication(seq) for seq in range(1, 6)]
    frames.insert(2, outgoing({"type": "pong"}))
    for frame in frames:
        assert writer.offer(frame)
    assert sink.writes == [frames[0].frame]
    await _next_turn()
    assert sink.writes == [frames[0].frame, b"".join(f.frame for f in frames[1:])]
    assert stats.deliveries == 5
    assert writer.offer(_publication(6))
    assert sink.writes[2] == _publication(6).frame
    assert stats.deliveries == 6


async def test_fast_writer_writes_nothing_after_a_close_frame() -> None:
    """Once the protocol sent a close frame (say, uvicorn's ping timeout), no data frame follows."""
    sink = RecordingSink()
    writer, stats = _fast_writer(sink)
    sink.close_sent = True
    writer.offer(_publication(1))
    writer.offer(_publication(2))
    await _next_turn()
    assert sink.writes == []
    assert stats.deliveries == 0


async def test_fast_writer_closes_a_slow_consumer_by_transport_backlog() -> None:
    """A client whose transport already holds the buffer's worth is closed with 4008."""
    sink = RecordingSink(buffered=900)
    writer, stats = _fast_writer(sink, limit=1_000)
    assert writer.offer(_publication(1, size=200)) is False
    assert writer.close_request is not None
    assert writer.close_request[0] == SLOW_CONSUMER
    assert stats.slow_consumer_closes == 1
    await _next_turn()
    assert sink.writes == []


async def test_fast_writer_lets_one_large_frame_through_an_empty_buffer() -> None:
    """One frame larger than the buffer still goes out when nothing else is pending."""
    sink = RecordingSink()
    writer, _stats = _fast_writer(sink, limit=100)
    assert writer.offer(_publication(1, size=500))
    await _next_turn()
    assert len(sink.writes) == 1


async def test_fast_writer_drops_gathered_frames_on_close() -> None:
    """A close requested before the flush drops what was gathered: nothing after a close."""
    sink = RecordingSink()
    writer, _stats = _fast_writer(sink)
    assert writer.offer(_publication(1))
    assert writer.offer(_publication(2))
    writer.close(1012, "bye")
    await _next_turn()
    assert sink.writes == [_publication(1).frame]
