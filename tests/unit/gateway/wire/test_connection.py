"""`WebSocketConnection` driven directly: bytes in through `data_received`, writes recorded.

The connection is built as uvicorn builds it (the three keywords) inside a
running loop, given a fake transport that records what is written and
whether reading is paused, then fed an upgrade request and client frames.
An endpoint standing in for admission accepts (or refuses) and listens with a
reader that counts what it is told.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Close, Frame, Opcode

from gateway.fanout.outbound import Flusher, Outbound
from gateway.fanout.publication import outgoing
from gateway.fanout.stats import Stats
from gateway.wire import connection as wire_connection
from gateway.wire.connection import (
    ENDPOINT_STATE_KEY,
    INBOX_HIGH_WATER,
    MAX_FRAME_BYTES,
    SERVICE_RESTART,
    SHUTDOWN_REASON,
    WebSocketConnection,
)
from gateway.wire.handshake import Upgrade, refusal, switching_protocols
from tests.support.wait import async_wait_until, scheduled_callbacks_run
from tests.support.ws_client import ACCEPT, client_frame, upgrade_request

HEADERS = [(b"date", b"Wed, 02 Dec 2026 07:57:34 GMT"), (b"server", b"uvicorn")]


class FakeTransport(asyncio.Transport):
    """Records writes, closes, aborts and whether reading is paused."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.reading = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


@dataclass
class FakeServerState:
    """What the connection uses of uvicorn's server state."""

    connections: set[Any] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    default_headers: list[tuple[bytes, bytes]] = field(default_factory=lambda: list(HEADERS))


class Reader:
    """Counts what the connection tells it."""

    def __init__(self) -> None:
        self.arrivals = 0
        self.closes = 0

    def messages_arrived(self) -> None:
        self.arrivals += 1

    def closed(self) -> None:
        self.closes += 1


class Endpoint:
    """Admission's stand-in: accepts every upgrade and listens, unless told otherwise."""

    def __init__(
        self,
        *,
        ping_interval: float = 60.0,
        ping_timeout: float = 60.0,
        decide: Callable[[WebSocketConnection], None] | None = None,
    ) -> None:
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.decide = decide
        self.upgrades: list[Upgrade] = []
        self.reader = Reader()

    def open(self, connection: WebSocketConnection, upgrade: Upgrade) -> None:
        self.upgrades.append(upgrade)
        if self.decide is not None:
            self.decide(connection)
            return
        head = connection.accept(ping_interval=self.ping_interval, ping_timeout=self.ping_timeout)
        connection.transport.write(head)
        connection.listen(self.reader)


@dataclass
class Opened:
    connection: WebSocketConnection
    transport: FakeTransport
    state: FakeServerState
    endpoint: Endpoint

    @property
    def reader(self) -> Reader:
        return self.endpoint.reader

    def feed(self, data: bytes) -> None:
        self.connection.data_received(data)

    def messages(self) -> list[str | bytes]:
        """Every message the connection holds for its reader, taken."""
        taken = []
        while (message := self.connection.take()) is not None:
            taken.append(message)
        return taken

    def frames_written(self) -> list[Frame]:
        """The frames written after the handshake's response."""
        data = self.transport.data
        return server_frames(data[data.index(b"\r\n\r\n") + 4 :])


# Every connection a test made; each is told its socket is gone after the test.
_made: list[WebSocketConnection] = []


@pytest.fixture(autouse=True)
def _sockets_end() -> Iterator[None]:
    """As a real transport would, end every connection: none stays watched for keepalive."""
    yield
    while _made:
        _made.pop().connection_lost(None)


def new_connection(
    state: FakeServerState, app_state: dict[str, Any]
) -> tuple[WebSocketConnection, FakeTransport]:
    """A connection as uvicorn makes one, given its transport (inside a running loop)."""
    connection = WebSocketConnection(config=None, server_state=state, app_state=app_state)
    _made.append(connection)
    transport = FakeTransport()
    connection.connection_made(transport)
    return connection, transport


def connect(endpoint: Endpoint | None = None, request: bytes | None = None) -> Opened:
    """A new connection handed the upgrade request (a browser's unless given)."""
    endpoint = endpoint or Endpoint()
    state = FakeServerState()
    connection, transport = new_connection(state, {ENDPOINT_STATE_KEY: endpoint})
    connection.data_received(upgrade_request("/ws") if request is None else request)
    return Opened(connection, transport, state, endpoint)


def server_frames(data: bytes) -> list[Frame]:
    """The unmasked frames in `data`, as a server writes them."""
    frames, start = [], 0
    while start < len(data):
        first, second = data[start], data[start + 1]
        assert not second & 0x80, "a server frame is never masked"
        size, start = second & 0x7F, start + 2
        if size >= 126:
            width = 2 if size == 126 else 8
            size, start = int.from_bytes(data[start : start + width], "big"), start + width
        frames.append(Frame(Opcode(first & 0x0F), data[start : start + size], bool(first & 0x80)))
        start += size
    return frames


def close_of(frame: Frame) -> Close:
    assert frame.opcode is Opcode.CLOSE, frame
    return Close.parse(frame.data)


def text(payload: bytes, *, fin: bool = True) -> bytes:
    return client_frame(Opcode.TEXT, payload, fin=fin)


# The handshake.


async def test_the_101_shares_the_first_write_with_the_first_frame_only() -> None:
    """The 101 that `accept` returns goes out with the first frame, in one write, and never
    again: a frame sent later in the same turn goes out alone at the turn's end."""
    first, second = outgoing({"type": "a"}), outgoing({"type": "b"})

    def greet(connection: WebSocketConnection) -> None:
        head = connection.accept(ping_interval=60, ping_timeout=60)
        outbound = Outbound(connection, head, 1 << 20, Stats(), Flusher(lambda seconds: None))
        transport = connection.transport
        assert isinstance(transport, FakeTransport)
        assert transport.writes == []  # held: nothing written yet
        outbound.send(first)
        outbound.send(second)

    opened = connect(Endpoint(decide=greet))
    await scheduled_callbacks_run()
    head = switching_protocols(ACCEPT, HEADERS)
    assert opened.transport.writes == [head + first.frame, second.frame]


async def test_a_plain_request_reaches_the_endpoint_read() -> None:
    """A browser's upgrade is read here and handed to the endpoint with its target, headers and
    answer; the connection is one of the server's from `connection_made` on."""
    opened = connect(request=upgrade_request("/ws/events/3?token=t", [("Origin", "https://a.b")]))
    (upgrade,) = opened.endpoint.upgrades
    assert upgrade.target == "/ws/events/3?token=t"
    assert upgrade.accept == ACCEPT
    assert upgrade.header(b"origin") == "https://a.b"
    assert opened.state.connections == {opened.connection}
    assert opened.transport.writes == [switching_protocols(ACCEPT, HEADERS)]


async def test_a_request_websockets_judges_reaches_the_endpoint_with_its_answer() -> None:
    """A valid upgrade the fast reading defers (a subprotocol offer) is read by websockets and
    handed on with the same answer and every header, lowercase."""
    raw = upgrade_request("/ws?token=t", [("Sec-WebSocket-Protocol", "chat")])
    opened = connect(request=raw)
    (upgrade,) = opened.endpoint.upgrades
    assert upgrade.target == "/ws?token=t"
    assert upgrade.accept == ACCEPT
    assert upgrade.header(b"sec-websocket-protocol") == "chat"
    assert opened.transport.writes == [switching_protocols(ACCEPT, HEADERS)]


async def test_a_request_websockets_refuses_gets_its_response_and_the_connection_closes() -> None:
    """A malformed upgrade never reaches the endpoint: websockets' 400 is written and the
    connection closed."""
    opened = connect(request=upgrade_request("/ws", key="dG9vIHNob3J0"))
    assert opened.endpoint.upgrades == []
    assert opened.transport.data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"invalid Sec-WebSocket-Key header" in opened.transport.data
    assert opened.transport.closed


async def test_only_the_first_bytes_are_read_as_the_request() -> None:
    """After a refused request, later bytes are not read as a second try: nothing more is written
    and the endpoint is never asked."""
    opened = connect(request=upgrade_request("/ws", [("X-Long", "a" * 9000)]))
    written = list(opened.transport.writes)
    assert written
    opened.feed(upgrade_request("/ws"))
    assert opened.transport.writes == written
    assert opened.endpoint.upgrades == []


async def test_refuse_writes_the_http_response_and_closes() -> None:
    """`refuse` writes the refusal as the only response and closes; nothing is read after it."""
    opened = connect(Endpoint(decide=lambda c: c.refuse(403, "Origin not allowed")))
    assert opened.transport.writes == [refusal(403, "Origin not allowed")]
    assert opened.transport.closed
    opened.connection.refuse(404, "again")  # too late: already answered
    opened.feed(text(b'{"type": "ping"}'))
    assert opened.transport.writes == [refusal(403, "Origin not allowed")]
    assert opened.messages() == []


async def test_an_upgrade_with_no_endpoint_ready_gets_503() -> None:
    """Before the lifespan has put the endpoint in the app state, an upgrade gets 503."""
    connection, transport = new_connection(FakeServerState(), {})
    connection.data_received(upgrade_request("/ws"))
    assert transport.writes == [refusal(503, "The server is not ready")]
    assert transport.closed


async def test_an_upgrade_the_endpoint_leaves_unanswered_gets_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An endpoint that neither accepts nor refuses: the client gets 500, and it is logged."""
    opened = connect(Endpoint(decide=lambda connection: None))
    assert opened.transport.writes == [refusal(500, "Internal error")]
    assert opened.transport.closed
    assert "the endpoint left an upgrade unanswered" in caplog.text


# Reading frames.


@pytest.mark.parametrize("size", [0, 1, 125, 126, 300])
async def test_a_frame_split_at_any_byte_boundary_arrives_once_whole(size: int) -> None:
    """Whole frames only are read: wherever a frame is cut in two reads, its message arrives once,
    after the second, whole."""
    payload = bytes(48 + i % 10 for i in range(size))
    frame = text(payload)
    for cut in range(1, len(frame)):
        opened = connect()
        opened.feed(frame[:cut])
        assert opened.messages() == [], cut
        assert opened.reader.arrivals == 0
        opened.feed(frame[cut:])
        assert opened.messages() == [payload.decode()], cut
        assert opened.reader.arrivals == 1


async def test_a_frame_of_the_largest_size_split_anywhere_arrives_once_whole() -> None:
    """A frame of 65,536 bytes (64-bit length) cut in its header, at its mask or in its payload
    arrives once, whole."""
    payload = b"x" * MAX_FRAME_BYTES
    frame = text(payload)
    for cut in [*range(1, 16), len(frame) // 2, len(frame) - 1]:
        opened = connect()
        opened.feed(frame[:cut])
        assert opened.messages() == [], cut
        opened.feed(frame[cut:])
        assert opened.messages() == [payload.decode()], cut


async def test_a_frame_fed_byte_by_byte_arrives_once_whole() -> None:
    """A frame arriving one byte per read arrives once, after its last byte."""
    opened = connect()
    payload = b'{"type": "ping", "pad": "' + b"y" * 200 + b'"}'
    frame = text(payload)
    for index in range(len(frame)):
        assert opened.messages() == []
        opened.feed(frame[index : index + 1])
    assert opened.messages() == [payload.decode()]
    assert opened.reader.arrivals == 1


@st.composite
def _frame_stream(draw: st.DrawFn) -> tuple[list[bytes], bytes, list[int]]:
    """Messages of every length class as masked frames, and cut points in their bytes."""
    sizes = draw(st.lists(st.sampled_from([0, 1, 125, 126, 200, 65_535, 65_536]), max_size=4))
    payloads = [bytes([97 + n]) * size for n, size in enumerate(sizes)]
    stream = b"".join(text(payload) for payload in payloads)
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=6))
    return payloads, stream, sorted(set(cuts))


@settings(max_examples=100, deadline=None)
@given(_frame_stream())
def test_frames_cut_anywhere_arrive_in_order_each_once_whole(
    frames: tuple[list[bytes], bytes, list[int]],
) -> None:
    """Frames of every length class, their bytes cut into reads at any points, arrive in order,
    each exactly once and whole."""
    payloads, stream, cuts = frames

    async def run() -> list[str | bytes]:
        opened = connect()
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            opened.feed(stream[start:end])
        return opened.messages()

    assert asyncio.run(run()) == [payload.decode() for payload in payloads]


async def test_a_fragmented_message_arrives_as_one() -> None:
    """A text message in three fragments, with a ping between two of them, arrives once, whole;
    the ping is answered with its payload on the way."""
    opened = connect()
    opened.feed(text(b'{"type"', fin=False))
    opened.feed(client_frame(Opcode.PING, b"hi") + client_frame(Opcode.CONT, b': "pi', fin=False))
    assert opened.messages() == []
    opened.feed(client_frame(Opcode.CONT, b'ng"}'))
    assert opened.messages() == ['{"type": "ping"}']
    assert opened.reader.arrivals == 1
    assert [(f.opcode, f.data) for f in opened.frames_written()] == [(Opcode.PONG, b"hi")]


async def test_a_fragmented_binary_message_arrives_as_bytes() -> None:
    """Binary fragments arrive joined, as bytes."""
    opened = connect()
    opened.feed(client_frame(Opcode.BINARY, b"\x00\x01", fin=False))
    opened.feed(client_frame(Opcode.CONT, b"\x02"))
    assert opened.messages() == [b"\x00\x01\x02"]


async def test_invalid_utf8_in_a_text_frame_closes_with_1007() -> None:
    """A text frame that is not UTF-8 is not delivered, nor anything read after it; the message
    before it is; the connection closes with 1007."""
    opened = connect()
    opened.feed(text(b"before") + text(b"\xff\xfe") + text(b"after"))
    assert opened.messages() == ["before"]
    (close,) = opened.frames_written()
    assert close_of(close).code == 1007
    assert opened.reader.closes == 1


async def test_a_frame_over_the_limit_closes_with_1009_from_its_header() -> None:
    """A frame declaring more than 65,536 bytes closes with 1009 as soon as its header is read,
    without waiting for its payload."""
    opened = connect()
    opened.feed(text(b"x" * (MAX_FRAME_BYTES + 1))[:14])
    (close,) = opened.frames_written()
    assert close_of(close).code == 1009
    assert opened.transport.closed
    assert opened.reader.closes == 1


async def test_messages_past_the_high_water_pause_reading_and_take_resumes_it() -> None:
    """Once INBOX_HIGH_WATER messages wait, the socket stops being read; it is read again once
    the reader has taken them all."""
    opened = connect()
    for _ in range(INBOX_HIGH_WATER - 1):
        opened.feed(text(b"m"))
    assert opened.transport.reading
    opened.feed(text(b"m"))
    assert not opened.transport.reading
    for _ in range(INBOX_HIGH_WATER - 1):
        assert opened.connection.take() == "m"
        assert not opened.transport.reading
    assert opened.connection.take() == "m"
    assert opened.transport.reading
    assert opened.connection.take() is None


async def test_the_reader_is_told_of_messages_that_came_before_it_listened() -> None:
    """A reader that starts listening after messages arrived is told at once; one that listens
    after the conversation ended is told it is closed."""
    accepted: list[WebSocketConnection] = []

    def accept_only(connection: WebSocketConnection) -> None:
        connection.transport.write(connection.accept(ping_interval=60, ping_timeout=60))
        accepted.append(connection)

    opened = connect(Endpoint(decide=accept_only))
    opened.feed(text(b"early"))
    reader = Reader()
    opened.connection.listen(reader)
    assert reader.arrivals == 1
    assert opened.messages() == ["early"]
    opened.connection.close_now(1000, "")
    late = Reader()
    opened.connection.listen(late)
    assert late.closes == 1


# Keepalive.


async def test_a_pong_matching_the_outstanding_ping_clears_it() -> None:
    """A ping goes out after the interval; the pong that echoes it clears it (the next ping
    follows, the connection stays); a pong with other bytes does not, and the connection is
    aborted once the timeout passes."""
    opened = connect(Endpoint(ping_interval=0.1, ping_timeout=0.3))

    def pings() -> list[Frame]:
        return [f for f in opened.frames_written() if f.opcode is Opcode.PING]

    async def pings_sent(count: int) -> bool:
        return len(pings()) >= count

    await async_wait_until(lambda: pings_sent(1), what="a ping")
    opened.feed(client_frame(Opcode.PONG, bytes(pings()[0].data)))
    await async_wait_until(lambda: pings_sent(2), what="the next ping")
    assert not opened.transport.closed
    first, second = pings()
    assert first.data != second.data
    opened.feed(client_frame(Opcode.PONG, b"other" + second.data))

    async def aborted() -> bool:
        return opened.transport.aborted

    await async_wait_until(aborted, what="the connection aborted")
    assert len(pings()) == 2


async def test_a_peer_that_never_answers_a_ping_is_aborted() -> None:
    """No pong at all: after the timeout the connection is dropped, with no close frame."""
    opened = connect(Endpoint(ping_interval=0.1, ping_timeout=0.1))

    async def aborted() -> bool:
        return opened.transport.aborted

    await async_wait_until(aborted, what="the connection aborted")
    assert [f.opcode for f in opened.frames_written()] == [Opcode.PING]


# Closing.


async def test_shutdown_sends_1012_and_waits_for_the_peers_close() -> None:
    """`shutdown()` (uvicorn's, at server stop) sends 1012 with the reason and ends the
    conversation; the socket closes once the client's close frame answers it."""
    opened = connect()
    opened.connection.shutdown()
    (close,) = opened.frames_written()
    assert close_of(close) == Close(SERVICE_RESTART, SHUTDOWN_REASON)
    assert opened.reader.closes == 1
    assert not opened.transport.closed
    opened.feed(client_frame(Opcode.CLOSE, Close(SERVICE_RESTART, "").serialize()))
    assert opened.transport.closed
    assert len(opened.frames_written()) == 1


async def test_shutdown_during_the_handshake_closes_the_socket() -> None:
    """A connection still in its handshake is just closed at shutdown."""
    connection, transport = new_connection(FakeServerState(), {})
    connection.shutdown()
    assert transport.writes == []
    assert transport.closed


async def test_a_second_close_now_does_nothing() -> None:
    """Only the first `close_now` writes a close frame and tells the reader."""
    opened = connect()
    opened.connection.close_now(4008, "first")
    opened.connection.close_now(1000, "second")
    (close,) = opened.frames_written()
    assert close_of(close) == Close(4008, "first")
    assert opened.reader.closes == 1


async def test_close_now_writes_its_prefix_first_in_the_same_write() -> None:
    """`close_now`'s prefix (a held 101) and the close frame go out in one write."""

    def refuse_after_accepting(connection: WebSocketConnection) -> None:
        head = connection.accept(ping_interval=60, ping_timeout=60)
        connection.close_now(1008, "Authentication token required", prefix=head)

    opened = connect(Endpoint(decide=refuse_after_accepting))
    (write,) = opened.transport.writes
    head = switching_protocols(ACCEPT, HEADERS)
    assert write.startswith(head)
    (close,) = server_frames(write[len(head) :])
    assert close_of(close) == Close(1008, "Authentication token required")


async def test_a_peer_that_never_answers_our_close_is_aborted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After our close frame, a peer silent for CLOSE_TIMEOUT_SECONDS has its socket dropped."""
    monkeypatch.setattr(wire_connection, "CLOSE_TIMEOUT_SECONDS", 0.05)
    opened = connect()
    opened.connection.close_now(1000, "bye")
    assert not opened.transport.closed

    async def aborted() -> bool:
        return opened.transport.aborted

    await async_wait_until(aborted, what="the connection aborted")


async def test_the_clients_close_is_answered_and_ends_the_conversation() -> None:
    """A client's close frame is echoed and the socket closed; the reader is told once, and
    messages that came before it can still be taken."""
    opened = connect()
    opened.feed(text(b"before") + client_frame(Opcode.CLOSE, Close(1000, "bye").serialize()))
    (close,) = opened.frames_written()
    assert close_of(close).code == 1000
    assert opened.transport.closed
    assert opened.reader.closes == 1
    assert opened.messages() == ["before"]
    opened.feed(text(b"after"))
    assert opened.messages() == []


async def test_connection_lost_ends_the_conversation_once() -> None:
    """A socket gone tells the reader once and leaves the server's connections; nothing read or
    written after it."""
    opened = connect()
    opened.connection.connection_lost(None)
    assert opened.reader.closes == 1
    assert opened.state.connections == set()
    opened.connection.close_now(1000, "")
    opened.connection.shutdown()
    opened.feed(text(b"late"))
    assert opened.frames_written() == []
    assert opened.messages() == []
    assert opened.reader.closes == 1


# Work for the reader.


async def test_spawned_work_is_a_task_the_server_waits_for_until_it_ends() -> None:
    """`spawn` runs the reader's work as a task in the server's tasks while it runs."""
    opened = connect()
    release = asyncio.Event()

    async def work() -> None:
        await release.wait()

    opened.connection.spawn(work())
    (task,) = opened.state.tasks
    assert not task.done()
    release.set()
    await task
    await scheduled_callbacks_run()
    assert opened.state.tasks == set()
