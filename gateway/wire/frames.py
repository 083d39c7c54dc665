"""Server frames built once, and where the whole frames in a client's bytes end (RFC 6455 5.2).

A server's frames are unmasked, so one frame built per message is valid on
every connection: the fan-out writes the same bytes to each watcher.
"""

from __future__ import annotations

from typing import Final

FIN: Final = 0x80
TEXT: Final = 0x1
PING: Final = 0x9
MASKED: Final = 0x80


def _header(opcode: int, size: int) -> bytes:
    first = FIN | opcode
    if size < 126:
        return bytes((first, size))
    if size < 65_536:
        return bytes((first, 126)) + size.to_bytes(2, "big")
    return bytes((first, 127)) + size.to_bytes(8, "big")


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame carrying `payload` (valid UTF-8)."""
    return _header(TEXT, len(payload)) + payload


def ping_frame(payload: bytes) -> bytes:
    """A ping carrying `payload` (at most 125 bytes)."""
    if len(payload) > 125:
        raise ValueError("a control frame carries at most 125 bytes")
    return _header(PING, len(payload)) + payload


def whole_frames_end(data: bytes | bytearray, max_size: int) -> tuple[int, bool]:
    """Where the last whole frame in `data` ends, and whether an unfinished one is too large.

    The second value is True when a frame whose header is complete declares a
    payload over `max_size`: its bytes need not be waited for, the parser
    refuses it as soon as it sees the header.
    """
    start, end = 0, len(data)
    while end - start >= 2:
        second = data[start + 1]
        size, offset = second & 0x7F, start + 2
        if size >= 126:
            width = 2 if size == 126 else 8
            if end - offset < width:
                break
            size, offset = int.from_bytes(data[offset : offset + width], "big"), offset + width
        if size > max_size:
            return start, True
        frame_end = offset + size + (4 if second & MASKED else 0)
        if frame_end > end:
            break
        start = frame_end
    return start, False
