"""Malformed frames of every kind against a real replica: an error reply or a contract close, never a crash."""

from __future__ import annotations

import json
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from shared.tokens import mint_token
from tests.conftest import JWT_SECRET
from tests.support.processes import ServiceProcess
from tests.support.redis_server import RedisServer

ERROR_CODES = {
    "invalid_message",
    "unknown_type",
    "invalid_event_id",
    "invalid_token",
    "too_many_subscriptions",
    "forbidden",
}
# Replies a frame that happens to be a valid command may get.
REPLY_TYPES = {"error", "pong", "subscribed", "unsubscribed", "token_refreshed", "stats"}
CLOSE_CODES = {1008, 1009}
TOKEN = mint_token(JWT_SECRET, 99)


@pytest.fixture(scope="module")
def gateway() -> Iterator[ServiceProcess]:
    redis = RedisServer()
    redis.start()
    # A generous rate limit: hypothesis sends frames far faster than any client should.
    env = {
        "JWT_SECRET": JWT_SECRET,
        "REDIS_URL": redis.url,
        "MAX_CLIENT_MESSAGES_PER_SECOND": "100000",
    }
    process = ServiceProcess("gateway", env)
    try:
        yield process.start()
    finally:
        process.close()
        redis.close()


class Connection:
    """One reused client connection, reopened whenever the server closed it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.socket: ClientConnection | None = None

    def get(self) -> ClientConnection:
        if self.socket is None:
            self.socket = connect(
                f"{self.url}/ws?token={TOKEN}", max_size=None, compression=None, legacy=True
            )
            assert orjson.loads(self.socket.recv(timeout=10))["type"] == "connection_established"
        return self.socket

    def drop(self) -> None:
        if self.socket is not None:
            self.socket.close()
        self.socket = None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
commands = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["subscribe_event", "unsubscribe_event", "refresh_token", "ping", "get_stats"]
        )
    },
    optional={
        "eventId": json_values,
        "since": json_values,
        "mode": json_values,
        "token": json_values,
    },
)
frames = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200),
    json_values.map(json.dumps),
    commands.map(json.dumps),
    st.dictionaries(st.text(max_size=10), json_values, max_size=5).map(json.dumps),
    st.integers(65_537, 70_000).map(lambda n: "x" * n),
    st.sampled_from(['{"type":', "{}" * 1000, "[" * 5000, '{"type":"ping"}' * 3, "\x00", "\ud7ff"]),
)


def _reply_or_close(connection: Connection, frame: str | bytes) -> dict[str, object] | int:
    """The server's reply to one frame, or the code it closed the connection with."""
    socket = connection.get()
    try:
        socket.send(frame)
        reply: dict[str, object] = orjson.loads(socket.recv(timeout=10))
    except ConnectionClosed as closed:
        connection.drop()
        return closed.rcvd.code if closed.rcvd is not None else 1006
    if reply["type"] == "subscribed":
        connection.drop()  # a subscription may bring more messages; start clean
    return reply


def test_malformed_frames_never_crash_the_replica(gateway: ServiceProcess) -> None:
    """Each frame gets one reply of a known type (errors with the contract's codes) or a 1008/1009
    close; after them all the replica still answers `ping` and logged no error."""
    connection = Connection(gateway.ws_url)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(frame=frames)
    def one_frame(frame: str | bytes) -> None:
        outcome = _reply_or_close(connection, frame)
        if isinstance(outcome, int):
            assert outcome in CLOSE_CODES
            return
        assert outcome["type"] in REPLY_TYPES, outcome
        if outcome["type"] == "error":
            assert outcome["code"] in ERROR_CODES, outcome
            assert isinstance(outcome["message"], str)

    one_frame()
    connection.drop()
    with connect(f"{gateway.ws_url}/ws?token={TOKEN}") as socket:
        assert orjson.loads(socket.recv(timeout=10))["type"] == "connection_established"
        socket.send('{"type": "ping"}')
        assert orjson.loads(socket.recv(timeout=10))["type"] == "pong"
    logs = gateway.logs()
    assert "Traceback" not in logs
    assert '"level":"error"' not in logs
