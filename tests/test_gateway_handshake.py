"""WS_IMPL=fast's own reading of upgrade requests agrees with websockets', and defers to it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.http11 import Request
from websockets.server import ServerProtocol

from gateway.fastws import FastWebSocketProtocol
from gateway.flusher import Flusher
from gateway.frame_writer import FrameWriter
from gateway.handshake import read_upgrade, switching_protocols
from gateway.metrics import Stats
from gateway.publication import outgoing
from tests.support.processes import ServiceProcess
from tests.support.sinks import RecordingSink, RecordingTransport

Start = Callable[..., ServiceProcess]

# RFC 6455 section 1.3's example key and the answer it gives.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
HEADERS = [
    ("host", "127.0.0.1:8000"),
    ("upgrade", "websocket"),
    ("connection", "Upgrade"),
    ("sec-websocket-key", KEY),
    ("sec-websocket-version", "13"),
]


def request(
    headers: list[tuple[str, str]], line: str = "GET /ws/events/1?token=t HTTP/1.1"
) -> bytes:
    """An upgrade request as uvicorn hands it on: its request line, then the headers."""
    text = line + "\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    return text.encode("latin-1")


def websockets_accept(raw: bytes) -> str | None:
    """What websockets answers: the Sec-WebSocket-Accept of a 101, else None."""
    protocol = ServerProtocol(max_size=65_536)
    protocol.receive_data(raw)
    events = protocol.events_received()
    if not events or not isinstance(events[0], Request):
        return None
    response = protocol.accept(events[0])
    return response.headers["Sec-WebSocket-Accept"] if response.status_code == 101 else None


def test_a_browser_request_is_read_with_its_headers_and_answer() -> None:
    """Extensions offered (as browsers do) and `keep-alive, Upgrade` (Firefox) are fine."""
    headers = [
        *HEADERS[:2],
        ("connection", "keep-alive, Upgrade"),
        *HEADERS[3:],
        ("sec-websocket-extensions", "permessage-deflate; client_max_window_bits"),
        ("origin", "https://tickets.example"),
    ]
    upgrade = read_upgrade(request(headers))
    assert upgrade is not None
    assert upgrade.target == "/ws/events/1?token=t"
    assert upgrade.accept == ACCEPT
    assert upgrade.headers == [(n.encode(), v.encode()) for n, v in headers]


@pytest.mark.parametrize(
    "headers",
    [
        [h for h in HEADERS if h[0] != "sec-websocket-key"],
        [*HEADERS, ("sec-websocket-key", KEY)],
        [*HEADERS[:3], ("sec-websocket-key", "dG9vIHNob3J0"), *HEADERS[4:]],
        [*HEADERS[:3], ("sec-websocket-key", "not base64 at all!"), *HEADERS[4:]],
        [*HEADERS[:4], ("sec-websocket-version", "8")],
        [h for h in HEADERS if h[0] != "upgrade"],
        [HEADERS[0], ("upgrade", "h2c"), *HEADERS[2:]],
        [*HEADERS[:2], ("connection", "keep-alive"), *HEADERS[3:]],
        [*HEADERS[:2], ("connection", ", Upgrade"), *HEADERS[3:]],
        [*HEADERS, ("sec-websocket-protocol", "chat")],
        [*HEADERS, ("content-length", "0")],
        [*HEADERS, ("origin", "https://a.example"), ("origin", "https://b.example")],
        [*HEADERS, *[(f"x-{i}", "1") for i in range(130)]],
        [*HEADERS, ("x-long", "a" * 9000)],
    ],
    ids=[
        "no key",
        "two keys",
        "short key",
        "key not base64",
        "version 8",
        "no upgrade",
        "upgrade h2c",
        "connection without upgrade",
        "connection list with an empty element",
        "subprotocol offered",
        "content-length",
        "two origins",
        "too many headers",
        "line too long",
    ],
)
def test_anything_unusual_is_left_to_websockets(headers: list[tuple[str, str]]) -> None:
    assert read_upgrade(request(headers)) is None


@pytest.mark.parametrize(
    "line", ["POST /ws HTTP/1.1", "GET /ws HTTP/1.0", "GET /wß HTTP/1.1", "GET /ws HTTP/1.1 x"]
)
def test_an_unusual_request_line_is_left_to_websockets(line: str) -> None:
    assert read_upgrade(request(HEADERS, line)) is None


def test_bytes_after_the_request_are_left_to_websockets() -> None:
    assert read_upgrade(request(HEADERS) + b"\x81\x00") is None


_names = st.sampled_from(
    ["upgrade", "connection", "sec-websocket-key", "sec-websocket-version", "origin", "x-a"]
)
_values = st.sampled_from(
    ["websocket", "WebSocket", "Upgrade", "keep-alive, upgrade", "upgrade,", "13", "8", KEY]
) | st.text(st.characters(min_codepoint=9, max_codepoint=255), max_size=30)


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    drop=st.lists(st.integers(0, len(HEADERS) - 1), max_size=2),
    extra=st.lists(st.tuples(_names, _values), max_size=3),
)
def test_whatever_is_read_here_websockets_accepts_with_the_same_answer(
    drop: list[int], extra: list[tuple[str, str]]
) -> None:
    """Never more lenient than websockets: a request read here gets websockets' 101 too."""
    headers = [h for i, h in enumerate(HEADERS) if i not in drop] + extra
    headers = [(n, v.strip(" \t")) for n, v in headers if "\r" not in v and "\n" not in v]
    raw = request(headers)
    upgrade = read_upgrade(raw)
    if upgrade is not None:
        assert websockets_accept(raw) == upgrade.accept


def test_the_response_carries_the_answer_then_the_servers_headers() -> None:
    response = switching_protocols(ACCEPT, [(b"server", b"uvicorn"), (b"x-a", b"1")])
    assert response == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\nserver: uvicorn\r\nx-a: 1\r\n\r\n"
    )


async def test_the_held_response_shares_the_first_write_only() -> None:
    """The 101 goes out with the app's first frame, in one write, and never again."""
    sink = RecordingSink()
    sink.head = b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
    writer = FrameWriter(sink, 1 << 20, Stats(), Flusher(float))  # type: ignore[arg-type]
    first, second = outgoing({"type": "a"}), outgoing({"type": "b"})
    writer.flush()  # nothing gathered: nothing written, the response still held
    assert sink.writes == []
    assert writer.offer(first)
    assert sink.writes == [b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + first.frame]
    assert sink.head is None
    writer.gather(second)
    writer.flush()
    assert sink.writes[1:] == [second.frame]


class PeerTransport(RecordingTransport):
    """A recording transport with the addresses uvicorn asks a new connection for."""

    def __init__(self) -> None:
        super().__init__(0)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def close(self) -> None:
        self.closing = True


async def no_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("no connection should reach the app")


async def test_only_the_first_bytes_are_read_as_the_request() -> None:
    """A request websockets could not parse is not followed by a second try from later bytes."""
    config = uvicorn.Config(no_app, ws_per_message_deflate=False, log_level="warning")
    config.load()
    state = uvicorn.server.ServerState()
    protocol = FastWebSocketProtocol(config=config, server_state=state, app_state={})
    transport = PeerTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.data_received(request([*HEADERS, ("x-long", "a" * 9000)]))
    protocol.data_received(request(HEADERS))
    assert getattr(protocol, "scope", None) is None
    assert protocol.accept_header is None
    assert not protocol.tasks


async def handshake(port: int, raw: bytes) -> tuple[bytes, bytes]:
    """Send an upgrade request; the response's head and what follows it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        rest = await asyncio.wait_for(reader.read(4096), 10)
        return head, rest
    finally:
        writer.close()


async def test_the_gateway_answers_both_kinds_of_request(
    service: Start, redis_url: str, token: Callable[..., str]
) -> None:
    """A plain request: 101 with the right answer, then `connection_established`. A request
    websockets must judge: its refusal, status and text."""
    gateway = service("gateway", {"REDIS_URL": redis_url, "WS_IMPL": "fast"})
    ok = [(n, v) for n, v in HEADERS if n != "host"]
    head, rest = await handshake(gateway.port, request(ok, f"GET /ws?token={token(5)} HTTP/1.1"))
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert f"Sec-WebSocket-Accept: {ACCEPT}\r\n".encode() in head
    assert b"\r\ndate: " in head
    assert b"connection_established" in rest

    bad = [h for h in ok if h[0] != "sec-websocket-key"]
    head, rest = await handshake(gateway.port, request(bad, f"GET /ws?token={token(5)} HTTP/1.1"))
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"missing Sec-WebSocket-Key header" in rest
