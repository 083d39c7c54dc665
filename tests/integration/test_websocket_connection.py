"""The gateway's own WebSocket connection, against a real replica and real Redis, over real sockets.

Each test serves a replica in its own event loop (the `serve_gateway`
fixture, tests/support/gateway.py), so what the replica holds (sessions,
watches, tasks, uvicorn's connections) can be looked at while clients connect
over TCP: `WsClient` for a well-behaved client, `RawWsClient` for bytes a
library would never send and peers that never answer.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

import httpx
import orjson
import pytest
from websockets.frames import Close, Opcode

from gateway.wire import connection as wire_connection
from gateway.wire.connection import MAX_FRAME_BYTES, SHUTDOWN_REASON, WebSocketConnection
from tests.support.gateway import Gateway, StartGateway
from tests.support.wait import async_wait_until
from tests.support.ws_client import (
    ACCEPT,
    RawWsClient,
    WsClient,
    client_frame,
    http_exchange,
    upgrade_request,
)

pytestmark = pytest.mark.timeout(60)

Token = Callable[..., str]


@pytest.fixture
async def gateway(serve_gateway: StartGateway) -> Gateway:
    return await serve_gateway()


async def until(condition: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll a plain condition with a deadline (tests/support/wait.py)."""

    async def check() -> object:
        return condition()

    await async_wait_until(check, timeout=timeout, what=what)


async def subscribed_client(gateway: Gateway, token: Token, event_id: int = 7) -> WsClient:
    client = await WsClient.open(gateway.url, f"/ws/events/{event_id}", token(1))
    assert (await client.recv_json())["type"] == "connection_established"
    assert (await client.recv_type("subscribed"))["eventId"] == event_id
    return client


async def subscribed_raw_client(gateway: Gateway, token: Token, event_id: int = 7) -> RawWsClient:
    client = await RawWsClient.open(gateway.port, f"/ws/events/{event_id}?token={token(1)}")
    assert (await client.recv_json())["type"] == "connection_established"
    assert (await client.recv_json())["type"] == "subscribed"
    return client


def connections(gateway: Gateway) -> list[WebSocketConnection]:
    """The WebSocket connections uvicorn's server holds (it calls `shutdown()` on each)."""
    return [
        c for c in gateway.server.server_state.connections if isinstance(c, WebSocketConnection)
    ]


async def all_released(gateway: Gateway) -> None:
    """Until the replica holds no session, no watch and no connection any more."""
    replica = gateway.replica
    await until(lambda: len(replica.sessions) == 0, what="every session ended")
    await until(lambda: replica.hub.subscription_count == 0, what="every watch given back")
    await until(lambda: not connections(gateway), what="every connection gone")
    assert replica.sessions.idle.is_set()
    stats = replica.stats_data()
    assert (stats["connections"], stats["subscriptions"], stats["eventsWatched"]) == (0, 0, 0)


def tasks_besides(baseline: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if task not in baseline and not task.done()}


async def no_task_left(gateway: Gateway, baseline: set[asyncio.Task[object]]) -> None:
    """Until no task runs beyond `baseline` (the test's and the server's own) or for uvicorn."""
    await until(
        lambda: not tasks_besides(baseline) and not gateway.server.server_state.tasks,
        what="no task left for the connections",
    )


# What an open connection holds.


async def test_an_idle_subscribed_client_holds_no_task_and_is_still_served(
    gateway: Gateway, token: Token
) -> None:
    """Once subscribed and quiet, a client holds no task (none in the loop beyond the baseline,
    none in uvicorn's server state); a ping still gets its pong, in a task that ends with it."""
    baseline = set(asyncio.all_tasks())
    async with await subscribed_client(gateway, token) as client:
        await until(lambda: len(gateway.replica.sessions) == 1, what="a session")
        await no_task_left(gateway, baseline)

        await client.send_json({"type": "ping"})
        assert (await client.recv_json())["type"] == "pong"
        await no_task_left(gateway, baseline)
    await all_released(gateway)


async def test_commands_are_answered_in_order(gateway: Gateway, token: Token) -> None:
    """Commands sent back to back, some of which await Redis, are answered in the order sent."""
    async with await subscribed_client(gateway, token) as client:
        commands = [
            {"type": "ping"},
            {"type": "subscribe_event", "eventId": 8, "mode": "add"},
            {"type": "ping"},
            {"type": "subscribe_event", "eventId": 9, "mode": "add"},
            {"type": "unsubscribe_event", "eventId": 9},
            {"type": "get_stats"},
            {"type": "ping"},
        ]
        for command in commands:
            await client.send_json(command)
        replies = [await client.recv_json() for _ in commands]
        assert [reply["type"] for reply in replies] == [
            "pong",
            "subscribed",
            "pong",
            "subscribed",
            "unsubscribed",
            "error",  # get_stats is for admins
            "pong",
        ]
        assert [r["eventId"] for r in replies if "eventId" in r] == [8, 9, 9]
        assert gateway.replica.hub.subscription_count == 2
    await all_released(gateway)


async def test_a_client_that_closes_while_commands_await_redis_gives_every_watch_back(
    gateway: Gateway, token: Token
) -> None:
    """A client that closes (with a close frame) right after sending subscribes that await Redis
    leaves no session and no watch behind."""
    client = await WsClient.open(gateway.url, "/ws", token(1))
    await client.recv_type("connection_established")
    for event_id in range(1, 21):
        await client.send_json({"type": "subscribe_event", "eventId": event_id, "mode": "add"})
    await client.close()
    await all_released(gateway)


async def test_a_client_that_vanishes_while_commands_await_redis_gives_every_watch_back(
    gateway: Gateway, token: Token
) -> None:
    """A client whose socket is dropped (no close frame) while its subscribes await Redis leaves
    no session and no watch behind."""
    async with await RawWsClient.open(gateway.port, f"/ws?token={token(1)}") as client:
        assert (await client.recv_json())["type"] == "connection_established"
        for event_id in range(1, 21):
            await client.send_json({"type": "subscribe_event", "eventId": event_id, "mode": "add"})
        client.abort()
    await all_released(gateway)


async def test_a_closed_connection_is_freed_by_reference_counting(
    gateway: Gateway, token: Token
) -> None:
    """No reference cycle (connection, session, outbound, hub) keeps a closed client's connection:
    it is freed with the garbage collector off."""
    gc.collect()  # what earlier tests left for the collector
    # Connections that outlive their tests elsewhere in this process are not this one.
    earlier = [o for o in gc.get_objects() if type(o) is WebSocketConnection]
    earlier_ids = {id(o) for o in earlier}  # unique: `earlier` keeps them alive

    def ours_left() -> bool:
        return any(
            type(o) is WebSocketConnection and id(o) not in earlier_ids for o in gc.get_objects()
        )

    gc.disable()
    try:
        async with await subscribed_client(gateway, token):
            assert ours_left()
        await all_released(gateway)
        await until(lambda: not ours_left(), what="the connection freed by reference counting")
    finally:
        gc.enable()
    del earlier


# The server's end of the conversation.


async def test_shutdown_closes_open_connections_with_1012(gateway: Gateway, token: Token) -> None:
    """When the server stops (should_exit), every open connection is closed with 1012 and its
    session ends."""
    first = await subscribed_client(gateway, token)
    second = await WsClient.open(gateway.url, "/ws", token(2))
    await second.recv_type("connection_established")
    gateway.server.should_exit = True
    assert await first.closed() == (1012, SHUTDOWN_REASON)
    assert await second.closed() == (1012, SHUTDOWN_REASON)
    await until(lambda: len(gateway.replica.sessions) == 0, what="the sessions ended")


async def test_the_clients_close_is_answered_and_the_connection_ends(
    gateway: Gateway, token: Token
) -> None:
    """A client's close frame is answered with a close frame carrying its code, then the server
    closes the TCP connection; the session and its watch are given back."""
    async with await subscribed_raw_client(gateway, token) as client:
        await client.send_close(1000, "bye")
        assert (await client.recv_close()).code == 1000
        assert await client.ended() == []
    await all_released(gateway)


async def test_a_peer_that_never_answers_the_close_frame_is_aborted(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that never answers the server's close frame (here: 1008, no token) has its socket
    dropped once the close timeout has passed."""
    monkeypatch.setattr(wire_connection, "CLOSE_TIMEOUT_SECONDS", 0.2)
    async with await RawWsClient.open(gateway.port, "/ws") as client:
        assert await client.recv_close() == Close(1008, "Authentication token required")
        # Well before the default timeout (10 s): the patched one is what ends it.
        assert await client.ended(timeout=5) == []
    await until(lambda: not connections(gateway), what="the connection gone")


# Reading client frames.


async def test_a_message_in_three_fragments_is_read_whole(gateway: Gateway, token: Token) -> None:
    """A text message sent as three fragments (each its own write) is one command."""
    async with await subscribed_raw_client(gateway, token) as client:
        await client.send_frame(Opcode.TEXT, b'{"type"', fin=False)
        await client.send_frame(Opcode.CONT, b': "pi', fin=False)
        await client.send_frame(Opcode.CONT, b'ng"}')
        assert (await client.recv_json())["type"] == "pong"
        await client.send_json({"type": "ping"})
        assert (await client.recv_json())["type"] == "pong"


async def test_a_frame_split_byte_by_byte_over_several_writes_is_read_whole(
    gateway: Gateway, token: Token
) -> None:
    """A frame whose bytes arrive one write at a time is read once, whole; the next frame, whole
    in one write, is read as well."""
    async with await subscribed_raw_client(gateway, token) as client:
        frame = client_frame(Opcode.TEXT, b'{"type": "ping"}')
        for index in range(len(frame)):
            await client.write(frame[index : index + 1])
        assert (await client.recv_json())["type"] == "pong"
        await client.write(frame + frame[:5])  # a whole frame and the start of the next
        assert (await client.recv_json())["type"] == "pong"
        await client.write(frame[5:])
        assert (await client.recv_json())["type"] == "pong"


def padded_ping(size: int) -> bytes:
    """A ping command of exactly `size` bytes."""
    message = b'{"type": "ping", "pad": ""}'
    padded = message[:-2] + b"x" * (size - len(message)) + message[-2:]
    assert len(padded) == size
    assert orjson.loads(padded)["type"] == "ping"
    return padded


async def test_a_frame_of_65536_bytes_passes(gateway: Gateway, token: Token) -> None:
    """A text frame of exactly the contract's limit (65,536 bytes) is read and answered."""
    async with await subscribed_raw_client(gateway, token) as client:
        await client.send_frame(Opcode.TEXT, padded_ping(MAX_FRAME_BYTES))
        assert (await client.recv_json())["type"] == "pong"


async def test_a_frame_of_65537_bytes_closes_with_1009(gateway: Gateway, token: Token) -> None:
    """A text frame one byte over the limit closes the connection with 1009."""
    async with await subscribed_raw_client(gateway, token) as client:
        await client.send_frame(Opcode.TEXT, padded_ping(MAX_FRAME_BYTES + 1))
        assert (await client.recv_close()).code == 1009
        assert await client.ended() == []
    await all_released(gateway)


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(
    gateway: Gateway, token: Token
) -> None:
    """A text frame that is not valid UTF-8 closes the connection with 1007."""
    async with await subscribed_raw_client(gateway, token) as client:
        await client.send_frame(Opcode.TEXT, b'{"type": "\xff"}')
        assert (await client.recv_close()).code == 1007
        assert await client.ended() == []
    await all_released(gateway)


async def test_a_binary_frame_gets_invalid_message(gateway: Gateway, token: Token) -> None:
    """A binary frame, even one carrying a valid command, is answered with `error`
    `invalid_message`, and the connection stays open."""
    async with await subscribed_client(gateway, token) as client:
        await client.connection.send(b'{"type": "ping"}')
        error = await client.recv_type("error")
        assert error["code"] == "invalid_message"
        await client.send_json({"type": "ping"})
        assert (await client.recv_json())["type"] == "pong"


# Keepalive.


async def test_a_client_that_answers_keepalive_pings_keeps_its_connection(
    serve_gateway: StartGateway, token: Token
) -> None:
    """The server sends pings every PING_INTERVAL_SECONDS; a client that answers each with its
    pong keeps the connection well past PING_TIMEOUT_SECONDS, and is still served."""
    gateway = await serve_gateway(PING_INTERVAL_SECONDS="0.2", PING_TIMEOUT_SECONDS="0.5")
    async with await subscribed_raw_client(gateway, token) as client:
        payloads = []
        # Each ping follows the pong of the one before: 5 intervals, twice the timeout.
        for _ in range(5):
            ping = await client.recv_frame()
            assert ping is not None
            assert ping.opcode is Opcode.PING
            payloads.append(bytes(ping.data))
            await client.send_frame(Opcode.PONG, bytes(ping.data))
        assert len(set(payloads)) == 5  # each ping carries its own payload
        await client.send_json({"type": "ping"})
        while (frame := await client.recv_frame()) is not None and frame.opcode is Opcode.PING:
            await client.send_frame(Opcode.PONG, bytes(frame.data))
        assert frame is not None
        assert orjson.loads(frame.data)["type"] == "pong"
        assert len(gateway.replica.sessions) == 1


async def test_a_client_that_never_answers_pings_is_dropped(
    serve_gateway: StartGateway, token: Token
) -> None:
    """A client that reads but never answers a ping is dropped (no close frame) once
    PING_TIMEOUT_SECONDS pass; its session and watch are given back."""
    gateway = await serve_gateway(PING_INTERVAL_SECONDS="0.2", PING_TIMEOUT_SECONDS="0.3")
    async with await subscribed_raw_client(gateway, token) as client:
        frames = await client.ended()
        assert [frame.opcode for frame in frames] == [Opcode.PING]
    await all_released(gateway)


async def test_a_pong_with_another_payload_does_not_answer_the_ping(
    serve_gateway: StartGateway, token: Token
) -> None:
    """Only the pong that echoes the ping's payload counts: a client answering with other bytes
    is dropped like one that never answers."""
    gateway = await serve_gateway(PING_INTERVAL_SECONDS="0.2", PING_TIMEOUT_SECONDS="0.3")
    async with await subscribed_raw_client(gateway, token) as client:
        ping = await client.recv_frame()
        assert ping is not None
        assert ping.opcode is Opcode.PING
        await client.send_frame(Opcode.PONG, b"not" + ping.data)
        assert await client.ended() == []
    await all_released(gateway)


# The opening handshake.


async def test_the_101_carries_the_answer_and_the_first_frame_is_connection_established(
    gateway: Gateway, token: Token
) -> None:
    """A browser's upgrade gets a 101 with the right Sec-WebSocket-Accept and uvicorn's `date`
    and `server` headers; the first frame after it is `connection_established`."""
    client = await RawWsClient.open(gateway.port, f"/ws?token={token(5)}")
    async with client:
        head = client.head
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert f"\r\nSec-WebSocket-Accept: {ACCEPT}\r\n".encode() in head
        assert b"\r\ndate: " in head
        assert b"\r\nserver: uvicorn\r\n" in head
        first = await client.recv_json()
        assert first["type"] == "connection_established"
        assert first["eventId"] is None


@pytest.mark.parametrize(
    "headers",
    [
        [("Sec-WebSocket-Protocol", "chat")],
        [("Sec-WebSocket-Protocol", "chat"), ("Sec-WebSocket-Protocol", "superchat")],
        [("Content-Length", "0")],
    ],
    ids=["subprotocol offered", "repeated header", "content-length"],
)
async def test_an_upgrade_left_to_websockets_is_accepted_and_served(
    gateway: Gateway, token: Token, headers: list[tuple[str, str]]
) -> None:
    """A valid upgrade the fast reading does not vouch for goes through websockets' own reading:
    accepted with the same answer (no subprotocol chosen), then served like any other."""
    request = upgrade_request(f"/ws/events/3?token={token(1)}", headers)
    async with await RawWsClient.open(gateway.port, request=request) as client:
        assert f"\r\nSec-WebSocket-Accept: {ACCEPT}\r\n".encode() in client.head
        assert b"sec-websocket-protocol" not in client.head.lower()
        assert (await client.recv_json())["type"] == "connection_established"
        assert (await client.recv_json())["type"] == "subscribed"
        await client.send_json({"type": "ping"})
        assert (await client.recv_json())["type"] == "pong"


async def test_a_websockets_client_offering_a_subprotocol_is_served(
    gateway: Gateway, token: Token
) -> None:
    """The websockets client library offering a subprotocol connects, gets none, and is served."""
    client = await WsClient.open(gateway.url, "/ws/events/7", token(1), subprotocols=["chat"])
    async with client:
        assert client.connection.subprotocol is None
        assert (await client.recv_json())["type"] == "connection_established"
        await client.recv_type("subscribed")
        await client.send_json({"type": "ping"})
        assert (await client.recv_json())["type"] == "pong"


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("dG9vIHNob3J0", b"invalid Sec-WebSocket-Key header"),
        ("not base64 at all!", b"invalid Sec-WebSocket-Key header"),
        (None, b"missing Sec-WebSocket-Key header"),
    ],
    ids=["short key", "key not base64", "no key"],
)
async def test_a_malformed_upgrade_gets_websockets_400(
    gateway: Gateway, token: Token, key: str | None, text: bytes
) -> None:
    """An upgrade with a bad or missing key gets websockets' own 400 and its text; the connection
    closes after it."""
    head, body = await http_exchange(
        gateway.port, upgrade_request(f"/ws?token={token(1)}", key=key)
    )
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert text in body
    await until(lambda: not connections(gateway), what="the connection gone")


@pytest.mark.parametrize(
    ("headers", "status", "text"),
    [
        ([("Upgrade", "websocket")], b"426 Upgrade Required", b"invalid Upgrade header"),
        (
            [("Origin", "https://a.example"), ("Origin", "https://b.example")],
            b"400 Bad Request",
            b"invalid Origin header: multiple values",
        ),
    ],
    ids=["two upgrade headers", "two origins"],
)
async def test_websockets_refusals_keep_their_status_and_text(
    gateway: Gateway, token: Token, headers: list[tuple[str, str]], status: bytes, text: bytes
) -> None:
    """A request only websockets can judge, and refuses, gets websockets' own status and text."""
    request = upgrade_request(f"/ws?token={token(1)}", headers)
    head, body = await http_exchange(gateway.port, request)
    assert head.startswith(b"HTTP/1.1 " + status + b"\r\n")
    assert text in body


async def test_an_unknown_path_gets_404(gateway: Gateway, token: Token) -> None:
    """An upgrade to a path with no WebSocket endpoint is refused with HTTP 404."""
    head, body = await http_exchange(gateway.port, upgrade_request(f"/nope?token={token(1)}"))
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert body == b"No WebSocket endpoint at this path"


async def test_a_foreign_origin_gets_403_when_allowed_origins_is_set(
    serve_gateway: StartGateway, token: Token
) -> None:
    """With ALLOWED_ORIGINS set, an upgrade from another Origin is refused with HTTP 403 before
    the handshake; an allowed one is accepted."""
    gateway = await serve_gateway(ALLOWED_ORIGINS="https://tickets.example")
    target = f"/ws?token={token(1)}"
    head, body = await http_exchange(
        gateway.port, upgrade_request(target, [("Origin", "https://evil.example")])
    )
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert body == b"Origin not allowed"
    allowed = [("Origin", "https://tickets.example")]
    async with await RawWsClient.open(gateway.port, target, allowed) as client:
        assert (await client.recv_json())["type"] == "connection_established"


async def test_http_routes_are_served_next_to_websockets(gateway: Gateway) -> None:
    """The same port serves the replica's HTTP routes (`http_url`)."""
    async with httpx.AsyncClient(base_url=gateway.http_url) as http:
        response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
