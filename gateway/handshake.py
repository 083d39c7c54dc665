"""The opening handshake of WS_IMPL=fast, for requests that need no judgement (RFC 6455 4.2).

uvicorn hands the WebSocket protocol the upgrade request that httptools has
already parsed, rebuilt as bytes; websockets then parses it again with its
generator-based reader and builds a `Headers` object for the request and one
for the response: ~55 µs of every connect, a tenth of its server CPU (issue
4's connect profile). A well-formed request is read here with a few splits
instead. Anything this module cannot vouch for exactly as websockets would — a
repeated or missing header, a malformed key, an unusual `Connection` list, a
subprotocol offer, a body, a line over websockets' limits — gets None, and
the caller lets websockets handle the request: every refusal keeps its
status and text.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Final

from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS
from websockets.utils import accept_key

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
    return Upgrade(target.decode("ascii"), headers, accept_key(key.decode("ascii")))


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
