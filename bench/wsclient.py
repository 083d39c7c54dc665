"""A minimal WebSocket client side (RFC 6455) for the load client: cheap per frame.

The load client must cost less than the servers it measures. Reading server
frames takes a few slices per frame; the upgrade request is built once; the
server's answer is checked against the one `Sec-WebSocket-Accept` its fixed key
gives. Client frames (pong, close) are masked with a zero key, which RFC 6455
allows; nothing here is secret.
"""

from __future__ import annotations

import base64
import hashlib
import struct

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
# Any 16 bytes, base64: the server's accept value is then fixed too.
KEY = base64.b64encode(b"seatcast-bench-1").decode()
ACCEPT = base64.b64encode(
    # RFC 6455 fixes SHA-1 and this GUID for the accept value.
    hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
).decode()
ZERO_MASK = b"\x00\x00\x00\x00"
# The first byte of a whole text message: the common case, read without a call.
FINAL_TEXT = 0x80 | TEXT
NO_STATUS = 1005
HEADER_END = b"\r\n\r\n"


class ProtocolError(Exception):
    """The server broke RFC 6455 or refused the upgrade; the message says how."""


def upgrade_request(host: str, port: int, target: str) -> bytes:
    """The HTTP/1.1 upgrade request for `target` (path and query)."""
    return (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "\r\n"
    ).encode()


def check_upgrade(head: bytes) -> None:
    """Raise ProtocolError unless `head` (the response up to its blank line) is a 101 for KEY."""
    status_line, _, headers = head.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or parts[1] != b"101":
        raise ProtocolError(f"upgrade refused: {status_line.decode(errors='replace')}")
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-accept":
            if value.strip().decode() != ACCEPT:
                raise ProtocolError("wrong Sec-WebSocket-Accept")
            return
    raise ProtocolError("no Sec-WebSocket-Accept")


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A complete masked client frame (zero mask) for a control payload under 126 bytes."""
    if len(payload) >= 126:
        raise ValueError("control frames carry at most 125 bytes")
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + ZERO_MASK + payload


class FrameReader:
    """Split the server's byte stream into whole messages: (opcode, payload)."""

    def __init__(self) -> None:
        # Bytes of an incomplete frame, waiting for the rest.
        self._pending = b""
        # Opcode and parts of a fragmented message; None when no message is in progress.
        self._fragments: tuple[int, list[bytes]] | None = None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Every message completed by `data`, in order."""
        if self._pending:
            data = self._pending + data
        messages: list[tuple[int, bytes]] = []
        position, end = 0, len(data)
        while end - position >= 2:
            first, second = data[position], data[position + 1]
            if second & 0x80:
                raise ProtocolError("the server masked a frame")
            size, start = second, position + 2
            if size == 126:
                if end - position < 4:
                    break
                size, start = int.from_bytes(data[position + 2 : position + 4]), position + 4
            elif size == 127:
                if end - position < 10:
                    break
                size, start = int.from_bytes(data[position + 2 : position + 10]), position + 10
            stop = start + size
            if stop > end:
                break
            if first == FINAL_TEXT:
                messages.append((TEXT, data[start:stop]))
            else:
                self._message(first, data[start:stop], messages)
            position = stop
        self._pending = data[position:]
        return messages

    def _message(self, first: int, payload: bytes, messages: list[tuple[int, bytes]]) -> None:
        opcode, final = first & 0x0F, first & 0x80
        # Control frames are never fragmented.
        if opcode >= CLOSE or (opcode != CONTINUATION and final):
            messages.append((opcode, payload))
        elif opcode != CONTINUATION:
            self._fragments = (opcode, [payload])
        elif self._fragments is None:
            raise ProtocolError("continuation frame without a message")
        else:
            self._fragments[1].append(payload)
            if final:
                kind, parts = self._fragments
                self._fragments = None
                messages.append((kind, b"".join(parts)))
