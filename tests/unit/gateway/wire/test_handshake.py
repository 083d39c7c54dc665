"""The fast reading of plain upgrade requests agrees with websockets', and defers to it otherwise.

`read_upgrade` may only ever say yes where websockets would accept the
request with the same answer; everything it does not vouch for gets None
and goes to websockets (gateway/wire/connection.py).
"""

from __future__ import annotations

import base64
from http import HTTPStatus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.utils import accept_key as websockets_accept_key

from gateway.wire.handshake import accept_key, read_upgrade, refusal, switching_protocols

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


def with_key(key: str) -> list[tuple[str, str]]:
    return [(name, key if name == "sec-websocket-key" else value) for name, value in HEADERS]


def websockets_accept(raw: bytes) -> str | None:
    """What websockets answers: the Sec-WebSocket-Accept of a 101, else None."""
    protocol = ServerProtocol(max_size=65_536)
    protocol.receive_data(raw)
    events = protocol.events_received()
    if not events or not isinstance(events[0], Request):
        return None
    response = protocol.accept(events[0])
    return response.headers["Sec-WebSocket-Accept"] if response.status_code == 101 else None


# read_upgrade


def test_a_browser_request_is_read_with_its_headers_and_answer() -> None:
    """Extensions offered (as browsers do) and `keep-alive, Upgrade` (Firefox) are read here: the
    target as sent, every header in order, the answer to the key."""
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


def test_an_upgrade_gives_its_path_query_and_headers() -> None:
    """The path is percent-decoded, the query string kept as sent, a header's first value found by
    its lowercase name (None when absent); header names are lowercased."""
    raw = request(
        [*HEADERS, ("Authorization", "Bearer abc"), ("X-A", "1"), ("x-a", "2")],
        "GET /ws/events/%37?token=a%20b&x=1 HTTP/1.1",
    )
    upgrade = read_upgrade(raw)
    assert upgrade is not None
    assert upgrade.path == "/ws/events/7"
    assert upgrade.query == "token=a%20b&x=1"
    assert upgrade.header(b"authorization") == "Bearer abc"
    assert upgrade.header(b"x-a") == "1"
    assert upgrade.header(b"origin") is None


def test_a_request_with_a_repeated_connection_header_is_read() -> None:
    """`Connection` may come twice (its values form one list), as websockets allows too."""
    raw = request([*HEADERS, ("connection", "keep-alive")])
    upgrade = read_upgrade(raw)
    assert upgrade is not None
    assert websockets_accept(raw) == upgrade.accept == ACCEPT


@pytest.mark.parametrize(
    "headers",
    [
        [h for h in HEADERS if h[0] != "sec-websocket-key"],
        [*HEADERS, ("sec-websocket-key", KEY)],
        with_key("dG9vIHNob3J0"),
        with_key("not base64 at all!"),
        [*HEADERS[:4], ("sec-websocket-version", "8")],
        [*HEADERS, ("sec-websocket-version", "13")],
        [h for h in HEADERS if h[0] != "upgrade"],
        [*HEADERS, ("upgrade", "websocket")],
        [HEADERS[0], ("upgrade", "h2c"), *HEADERS[2:]],
        [h for h in HEADERS if h[0] != "connection"],
        [*HEADERS[:2], ("connection", "keep-alive"), *HEADERS[3:]],
        [*HEADERS[:2], ("connection", ", Upgrade"), *HEADERS[3:]],
        [*HEADERS, ("sec-websocket-protocol", "chat")],
        [*HEADERS, ("content-length", "0")],
        [*HEADERS, ("transfer-encoding", "chunked")],
        [*HEADERS, ("origin", "https://a.example"), ("origin", "https://b.example")],
        [*HEADERS, *[(f"x-{i}", "1") for i in range(130)]],
        [*HEADERS, ("x-long", "a" * 9000)],
        [*HEADERS, ("bad name", "1")],
        [*HEADERS, ("x-a", "a\x01b")],
    ],
    ids=[
        "no key",
        "two keys",
        "short key",
        "key not base64",
        "version 8",
        "two versions",
        "no upgrade",
        "two upgrades",
        "upgrade h2c",
        "no connection",
        "connection without upgrade",
        "connection list with an empty element",
        "subprotocol offered",
        "content-length",
        "transfer-encoding",
        "two origins",
        "too many headers",
        "line too long",
        "header name not a token",
        "control character in a value",
    ],
)
def test_anything_unusual_is_left_to_websockets(headers: list[tuple[str, str]]) -> None:
    """A request this module cannot vouch for exactly as websockets would gets None."""
    assert read_upgrade(request(headers)) is None


@pytest.mark.parametrize(
    "line", ["POST /ws HTTP/1.1", "GET /ws HTTP/1.0", "GET /wß HTTP/1.1", "GET /ws HTTP/1.1 x"]
)
def test_an_unusual_request_line_is_left_to_websockets(line: str) -> None:
    """Another method or version, a non-ASCII target, or a malformed line: websockets judges."""
    assert read_upgrade(request(HEADERS, line)) is None


def test_bytes_after_the_request_are_left_to_websockets() -> None:
    """A request followed by more bytes (a body, a frame) is not read here."""
    assert read_upgrade(request(HEADERS) + b"\x81\x00") is None


def test_an_unfinished_request_is_left_to_websockets() -> None:
    """A request with no blank line after its headers is not read here."""
    assert read_upgrade(request(HEADERS)[:-2]) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=16))
def test_any_key_gets_the_answer_websockets_computes(nonce: bytes) -> None:
    """For any valid key (16 random bytes, base64), the Sec-WebSocket-Accept read here is the one
    websockets' `ServerProtocol.accept` answers with."""
    raw = request(with_key(base64.b64encode(nonce).decode()))
    upgrade = read_upgrade(raw)
    assert upgrade is not None
    assert upgrade.accept == websockets_accept(raw)


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
    """Never more lenient than websockets: a request read here gets websockets' 101 too, with the
    same answer."""
    headers = [h for i, h in enumerate(HEADERS) if i not in drop] + extra
    headers = [(n, v.strip(" \t")) for n, v in headers if "\r" not in v and "\n" not in v]
    raw = request(headers)
    upgrade = read_upgrade(raw)
    if upgrade is not None:
        assert websockets_accept(raw) == upgrade.accept


# accept_key


def test_accept_key_answers_the_rfc_example() -> None:
    """RFC 6455 section 1.3: the sample nonce's key is answered with its published value."""
    assert accept_key(KEY.encode()) == ACCEPT


@given(st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40))
def test_accept_key_agrees_with_websockets(key: str) -> None:
    """For any key text, the answer is websockets' own `accept_key`."""
    assert accept_key(key.encode()) == websockets_accept_key(key)


# switching_protocols


def test_the_101_carries_the_answer_then_the_servers_headers() -> None:
    """Status line, Upgrade, Connection, the accept value, then the given headers in order, and
    the blank line."""
    response = switching_protocols(ACCEPT, [(b"server", b"uvicorn"), (b"x-a", b"1")])
    assert response == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\nserver: uvicorn\r\nx-a: 1\r\n\r\n"
    )


def test_the_101_without_extra_headers_ends_after_the_answer() -> None:
    """No headers given: the response ends right after Sec-WebSocket-Accept."""
    assert switching_protocols(ACCEPT, []).endswith(
        b"Sec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\n\r\n"
    )


# refusal


@pytest.mark.parametrize(
    ("status", "text"),
    [(403, "Origin not allowed"), (404, "No WebSocket endpoint at this path"), (503, "Prêt ? Non")],
)
def test_a_refusal_is_a_complete_plain_text_response(status: int, text: str) -> None:
    """The status line with its reason phrase, a UTF-8 text body whose Content-Length counts its
    bytes, and `Connection: close`."""
    response = refusal(status, text)
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.split(b"\r\n")
    assert status_line == f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()
    headers = dict(line.split(b": ", 1) for line in lines)
    assert headers == {
        b"Content-Type": b"text/plain; charset=utf-8",
        b"Content-Length": str(len(text.encode())).encode(),
        b"Connection": b"close",
    }
    assert body.decode() == text
