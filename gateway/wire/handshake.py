"""The opening handshake for requests that need no judgement (RFC 6455 4.2), and refusals.

uvicorn hands the WebSocket protocol the upgrade request that httptools has
already parsed, rebuilt as bytes. websockets' `ServerProtocol` would parse it
again with its generator-based reader and build a `Headers` object for the
request and one for the response, a tenth of a connect's server CPU
(docs/performance.md). A well-formed request is read here with a few splits
instead. Anything this module cannot vouch for exactly as websockets would (a
repeated or missing header, a malformed key, an unusual `Connection` list, a
subprotocol offer, a body, a line over websockets' limits) gets None, and
the caller lets websockets handle the request: every refusal keeps its
status and text.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final
from urllib.parse import unquote

# websockets' default limits on a request: past them, it is websockets that answers.
MAX_NUM_HEADERS: Final = 128
MAX_LINE_LENGTH: Final = 8192
# RFC 6455 1.3: appended to the client's key to prove the server read it.
ACCEPT_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# RFC 9110 tokens and field values, as websockets' parser checks them.
_TOKEN: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_VALUE: Final = re.compile(rb"[\x09\x20-\x7e\x80-\xff]*")
# A `Connection` header that is a plain token list: `Upgrade`, `keep-alive, Upgrade`.
_TOKEN_LIST: Final = re.compile(
    rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+(?:[ \t]*,[ \t]*[-!#$%&'*+.^_`|~0-9a-zA-Z]+)*"
)
# Headers a fast-path request has exactly once.
_ONCE: Final = (b"upgrade", b"sec-websocket-key", b"sec-websocket-version")
# Headers that each call for websockets' own handling: body, multiple origins, subprotocols.
_DEFER: Final = (b"transfer-encoding", b"content-length", b"sec-websocket-protocol")


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A valid handshake request, read."""

    # The request target as sent: path and query string, percent-encoded.
    target: str
    # (lowercase name, value) in request order, as the ASGI scope carries them.
    headers: list[tuple[bytes, bytes]]
    # The `Sec-WebSocket-Accept` value that answers the key.
    accept: str

    @property
    def path(self) -> str:
        """The target's path, percent-decoded."""
        return unquote(self.target.partition("?")[0])

    @property
    def query(self) -> str:
        """The target's query string, as sent."""
        return self.target.partition("?")[2]

    def header(self, name: bytes) -> str | None:
        """The first value of header `name` (lowercase), or None."""
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None


def read_upgrade(request: bytes) -> Upgrade | None:
    """The upgrade request in `request`, or None if websockets should judge it."""
    head, blank, rest = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not blank or rest or len(lines) > MAX_NUM_HEADERS + 1:
        return None
    if any(len(line) > MAX_LINE_LENGTH - 2 for line in lines):
        return None
    method, _, rest_of_line = lines[0].partition(b" ")
    target, _, version = rest_of_line.partition(b" ")
    if method != b"GET" or version != b"HTTP/1.1" or not target.isascii():
        return None
    headers = _headers(lines[1:])
    if headers is None or not _is_upgrade(headers):
        return None
    key = _value(headers, b"sec-websocket-key")
    if _value(headers, b"sec-websocket-version") != b"13" or not _is_key(key):
        return None
    return Upgrade(target.decode("ascii"), headers, accept_key(key))


def accept_key(key: bytes) -> str:
    """The `Sec-WebSocket-Accept` value answering `key` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest()).decode("ascii")


def _headers(lines: list[bytes]) -> list[tuple[bytes, bytes]] | None:
    headers = []
    for line in lines:
        name, colon, value = line.partition(b":")
        value = value.strip(b" \t")
        if not colon or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            return None
        headers.append((name.lower(), value))
    return headers


def _is_upgrade(headers: list[tuple[bytes, bytes]]) -> bool:
    names = [name for name, _ in headers]
    if any(names.count(name) != 1 for name in _ONCE) or names.count(b"origin") > 1:
        return False
    if any(name in names for name in _DEFER):
        return False
    if _value(headers, b"upgrade").lower() != b"websocket":
        return False
    connection = [value for name, value in headers if name == b"connection"]
    if not all(_TOKEN_LIST.fullmatch(value) for value in connection):
        return False
    options = b",".join(connection).lower().split(b",")
    return any(option.strip(b" \t") == b"upgrade" for option in options)


def _value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    """The value of a header that `_is_upgrade` found exactly once."""
    return next(value for key, value in headers if key == name)


def _is_key(key: bytes) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False


def switching_protocols(accept: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The 101 response: websockets' headers, then uvicorn's and the app's (`headers`)."""
    lines = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept.encode("ascii") + b"\r\n"
    ]
    lines += [name + b": " + value + b"\r\n" for name, value in headers]
    lines.append(b"\r\n")
    return b"".join(lines)


def refusal(status: int, text: str) -> bytes:
    """A plain-text HTTP response refusing the upgrade; the connection closes after it."""
    body = text.encode()
    phrase = HTTPStatus(status).phrase.encode("ascii")
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (status, phrase, len(body))
    ) + body
