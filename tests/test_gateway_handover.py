"""What a quiet client keeps under WS_IMPL=fast: no task, no scope, no websockets parser.

A set-up connection's reading is handed over from the ASGI task, and
websockets' connection object is dropped between whole frames. The gateway
runs in this process under uvicorn (with the replica's own config), so its
tasks, sessions, hub and protocols can be looked at; clients connect over
real sockets.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from gateway import server as gateway_server
from gateway.app import create_app
from gateway.fastws import FastWebSocketProtocol, whole_frames
from gateway.replica import Replica
from shared.settings import gateway_settings
from tests.support.ports import free_port
from tests.support.wait import async_wait_until as _async_wait_until
from tests.support.ws_client import WsClient

pytestmark = pytest.mark.timeout(60)


async def async_wait_until(condition: Callable[[], object], what: str) -> None:
    async def check() -> object:
        return condition()

    await _async_wait_until(check, what=what)


class Gateway:
    """A replica served in this process; `url` is its WebSocket base URL."""

    def __init__(self, server: uvicorn.Server, replica: Replica, port: int) -> None:
        self.server = server
        self.replica = replica
        self.url = f"ws://127.0.0.1:{port}"

    def protocols(self) -> list[FastWebSocketProtocol]:
        return [
            c for c in self.server.server_state.connections if isinstance(c, FastWebSocketProtocol)
        ]


@pytest.fixture
async def serve(
    redis_url: str, jwt_secret: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    """Start a replica in this process, with settings beyond the defaults given as `env`."""
    # The replica's own config, but the test process's logging stays as it was.
    monkeypatch.setattr(gateway_server, "uvicorn_log_config", lambda level: None)
    running: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(**env: str) -> Gateway:
        port = free_port()
        settings = gateway_settings(
            {
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "REDIS_URL": redis_url,
                "JWT_SECRET": jwt_secret,
                "WS_IMPL": "fast",
                "DRAIN_SECONDS": "0",
                "MAX_CLIENT_MESSAGES_PER_SECOND": "1000",
                **env,
            }
        )
        app = create_app(settings)
        server = uvicorn.Server(gateway_server.uvicorn_config(settings, app))
        serving = asyncio.create_task(server.serve())
        running.append((server, serving))
        await async_wait_until(lambda: server.started or serving.done(), what="started")
        assert server.started
        return Gateway(server, app.state.replica, port)

    yield start
    for server, serving in running:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)


@pytest.fixture
async def gateway(serve: Callable[..., Awaitable[Gateway]]) -> Gateway:
    return await serve()


def _tasks_besides(baseline: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if task not in baseline and not task.done()}


async def _quiet(gateway: Gateway, baseline: set[asyncio.Task[object]]) -> None:
    """Until the server holds no task beyond `baseline` (the test's own and the server's)."""
    await async_wait_until(
        lambda: not _tasks_besides(baseline) and not gateway.server.server_state.tasks,
        what="no task left for the connections",
    )


async def _subscribed_client(gateway: Gateway, token: Callable[..., str]) -> WsClient:
    client = await WsClient.open(gateway.url, "/ws/events/7", token(1))
    await client.recv_json()  # connection_established
    await client.recv_type("subscribed")
    return client


def _protocol(gateway: Gateway) -> FastWebSocketProtocol:
    (protocol,) = gateway.protocols()
    return protocol


async def test_an_idle_client_holds_no_task_and_is_still_served(
    gateway: Gateway, token: Callable[..., str]
) -> None:
    """Once subscribed, a client holds no task and no scope; its commands are answered in order,
    each in a task that ends with it; leaving gives every watch back."""
    baseline = set(asyncio.all_tasks())
    async with await WsClient.open(gateway.url, "/ws/events/7", token(1)) as client:
        assert (await client.recv_json())["type"] == "connection_established"
        assert (await client.recv_type("subscribed"))["eventId"] == 7
        await async_wait_until(lambda: len(gateway.replica.sessions) == 1, what="a session")
        await _quiet(gateway, baseline)
        (protocol,) = gateway.protocols()
        assert not hasattr(protocol, "scope")  # dropped with the ASGI task

        # Commands are still answered, in order, each in a task that ends with it.
        await client.send_json({"type": "ping"})
        await client.send_json({"type": "subscribe_event", "eventId": 8, "mode": "add"})
        await client.send_json({"type": "ping"})
        kinds = [(await client.recv_json())["type"] for _ in range(3)]
        assert kinds == ["pong", "subscribed", "pong"]
        assert gateway.replica.hub.subscription_count == 2
        await _quiet(gateway, baseline)

    await async_wait_until(lambda: not gateway.replica.sessions, what="the session ended")
    assert gateway.replica.hub.subscription_count == 0
    assert gateway.replica.idle.is_set()


async def test_a_closed_connection_is_freed_without_the_collector(
    gateway: Gateway, token: Callable[..., str]
) -> None:
    """No reference cycle through the session, its mailbox or the scope keeps a closed client."""
    async with await _subscribed_client(gateway, token):
        protocol = _protocol(gateway)
        # The session refers to it through its writer: it would keep it too.
        gone = weakref.ref(protocol)
        del protocol
        gc.disable()
    try:
        await async_wait_until(lambda: not gateway.replica.sessions, what="the session ended")
        await async_wait_until(lambda: gone() is None, what="freed by reference counting")
    finally:
        gc.enable()


async def test_a_client_that_closes_while_a_command_awaits_redis_is_released(
    gateway: Gateway, token: Callable[..., str]
) -> None:
    """The command's task sees the close after it: no watch is left behind."""
    client = await WsClient.open(gateway.url, "/ws", token(1))
    await client.recv_json()
    for event_id in range(1, 21):
        await client.send_json({"type": "subscribe_event", "eventId": event_id, "mode": "add"})
    await client.close()
    await async_wait_until(lambda: not gateway.replica.sessions, what="the session ended")
    await async_wait_until(
        lambda: gateway.replica.hub.subscription_count == 0, what="every watch given back"
    )


async def test_shutdown_closes_handed_over_connections_with_1012(
    gateway: Gateway, token: Callable[..., str]
) -> None:
    """Server shutdown closes a handed-over connection with 1012 and ends its session."""
    async with await _subscribed_client(gateway, token) as client:
        gateway.server.should_exit = True
        code, _ = await client.closed()
    assert code == 1012
    await async_wait_until(lambda: not gateway.replica.sessions, what="the session ended")


async def test_a_quiet_client_keeps_no_websockets_connection(
    gateway: Gateway, token: Callable[..., str]
) -> None:
    """Between whole frames the protocol holds no websockets connection object; one is made for a
    frame and dropped after it."""
    async with await _subscribed_client(gateway, token) as client:
        protocol = _protocol(gateway)
        assert protocol._conn is None
        await client.send_json({"type": "ping"})
        assert (await client.recv_json())["type"] == "pong"
        assert protocol._conn is None  # made for the frame, dropped after it


async def test_fragments_and_frames_split_across_reads_are_still_read(
    gateway: Gateway, token: Callable[..., str]
) -> None:
    """A message in two frames, and a frame whose bytes arrive in two reads, are read whole; after a
    split read the connection object stays."""
    async with await _subscribed_client(gateway, token) as client:
        protocol = _protocol(gateway)
        await client.connection.send(['{"type":', ' "ping"}'])  # one message, two frames
        assert (await client.recv_json())["type"] == "pong"
        assert protocol._conn is None

        frame = Frame(Opcode.TEXT, b'{"type": "ping"}').serialize(mask=True, extensions=[])
        transport = client.connection.transport
        transport.write(frame[:3])  # ends inside the frame's header
        await async_wait_until(lambda: protocol._torn, what="the first part read")
        assert protocol._conn is not None  # it holds the part: kept from now on
        transport.write(frame[3:])
        assert (await client.recv_json())["type"] == "pong"
        await client.send_json({"type": "ping"})
        assert (await client.recv_json())["type"] == "pong"


async def test_keepalive_pings_are_answered_and_leave_no_connection_object(
    serve: Callable[..., Awaitable[Gateway]], token: Callable[..., str]
) -> None:
    """uvicorn's keepalive pings still go out and their pongs are matched, with no connection object
    kept between them."""
    gateway = await serve(PING_INTERVAL_SECONDS="0.2", PING_TIMEOUT_SECONDS="5")
    async with await _subscribed_client(gateway, token) as client:
        protocol = _protocol(gateway)
        # The client's library answers pings; uvicorn measures the round trip from the pong.
        await async_wait_until(lambda: protocol.last_ping_rtt > 0, what="a pong matched")
        await async_wait_until(lambda: protocol._conn is None, what="released after the ping")
        await client.send_json({"type": "ping"})
        assert (await client.recv_json())["type"] == "pong"


@st.composite
def _client_frames(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Masked client frames of every length class, and where each one ends."""
    sizes = draw(st.lists(st.sampled_from([0, 1, 125, 126, 200, 65_535, 65_536]), max_size=4))
    data, ends = b"", []
    for size in sizes:
        data += Frame(Opcode.TEXT, b"x" * size).serialize(mask=True, extensions=[])
        ends.append(len(data))
    return data, ends


@given(_client_frames(), st.data())
def test_whole_frames_is_true_exactly_at_frame_ends(
    frames: tuple[bytes, list[int]], data: st.DataObject
) -> None:
    """`whole_frames` holds for client frames of every length class cut at a frame's end, and for no
    other cut."""
    stream, ends = frames
    assert whole_frames(stream)
    cut = data.draw(st.integers(0, len(stream)))
    assert whole_frames(stream[:cut]) == (cut == 0 or cut in ends)


async def test_a_handshake_websockets_read_keeps_its_connection_object(
    gateway: Gateway, token: Callable[..., str]
) -> None:
    """Only after a handshake read here are the next bytes known to start a frame."""
    client = await WsClient.open(gateway.url, "/ws/events/7", token(1), subprotocols=["chat"])
    async with client:
        await client.recv_json()  # connection_established
        await client.recv_type("subscribed")
        protocol = _protocol(gateway)
        await client.send_json({"type": "ping"})
        assert (await client.recv_json())["type"] == "pong"
        assert protocol._conn is not None
