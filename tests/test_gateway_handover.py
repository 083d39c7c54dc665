"""WS_IMPL=fast hands a set-up connection's reading over: no task while a client is quiet.

The gateway runs in this process under uvicorn (with the replica's own config),
so the tasks, the sessions and the hub can be looked at; clients connect over
real sockets.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Callable

import pytest
import uvicorn

from gateway import server as gateway_server
from gateway.app import create_app
from gateway.fastws import FastWebSocketProtocol
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
async def gateway(
    redis_url: str, jwt_secret: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Gateway]:
    port = free_port()
    env = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "REDIS_URL": redis_url,
        "JWT_SECRET": jwt_secret,
        "WS_IMPL": "fast",
        "DRAIN_SECONDS": "0",
        "MAX_CLIENT_MESSAGES_PER_SECOND": "1000",
    }
    app = create_app(gateway_settings(env))
    # The replica's own config, but the test process's logging stays as it was.
    monkeypatch.setattr(gateway_server, "uvicorn_log_config", lambda level: None)
    config = gateway_server.uvicorn_config(app.state.replica.settings, app)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    await async_wait_until(lambda: server.started or serving.done(), what="the gateway started")
    assert server.started
    try:
        yield Gateway(server, app.state.replica, port)
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)


def _tasks_besides(baseline: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if task not in baseline and not task.done()}


async def _quiet(gateway: Gateway, baseline: set[asyncio.Task[object]]) -> None:
    """Until the server holds no task beyond `baseline` (the test's own and the server's)."""
    await async_wait_until(
        lambda: not _tasks_besides(baseline) and not gateway.server.server_state.tasks,
        what="no task left for the connections",
    )


async def test_an_idle_client_holds_no_task_and_is_still_served(
    gateway: Gateway, token: Callable[..., str]
) -> None:
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
    async with await WsClient.open(gateway.url, "/ws/events/7", token(1)) as client:
        await client.recv_json()  # connection_established
        await client.recv_type("subscribed")
        await async_wait_until(lambda: gateway.protocols(), what="the connection")
        (protocol,) = gateway.protocols()
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
    async with await WsClient.open(gateway.url, "/ws/events/7", token(1)) as client:
        await client.recv_json()  # connection_established
        await client.recv_type("subscribed")
        gateway.server.should_exit = True
        code, _ = await client.closed()
    assert code == 1012
    await async_wait_until(lambda: not gateway.replica.sessions, what="the session ended")
