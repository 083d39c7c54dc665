"""Just enough of the Redis protocol (RESP2) for a pub/sub connection.

The floor server reads pushes with this instead of redis-py, so its cost per
Redis message is as close to nothing as Python gets: the floor measures the
writes, not a client library.
"""

from __future__ import annotations

Item = bytes | int
CRLF = b"\r\n"
ARRAY, BULK, INTEGER, ERROR = ord("*"), ord("$"), ord(":"), ord("-")


class RespError(Exception):
    """Redis answered with an error or with something a pub/sub reader never expects."""


def command(*parts: bytes) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%b\r\n" % (len(part), part))
    return b"".join(out)


class PushReader:
    """Split a byte stream into complete top-level arrays of bulk strings and integers."""

    def __init__(self) -> None:
        # Bytes received and not yet parsed: at most one incomplete array.
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[Item]]:
        """Every array completed by `data`, in order."""
        self._buffer += data
        arrays: list[list[Item]] = []
        position = 0
        while (parsed := _array(self._buffer, position)) is not None:
            array, position = parsed
            arrays.append(array)
        del self._buffer[:position]
        return arrays


def _array(buffer: bytearray, position: int) -> tuple[list[Item], int] | None:
    end = buffer.find(CRLF, position)
    if end < 0:
        return None
    if buffer[position] != ARRAY:
        raise RespError(bytes(buffer[position:end]).decode(errors="replace"))
    count = int(buffer[position + 1 : end])
    items: list[Item] = []
    position = end + 2
    for _ in range(count):
        parsed = _item(buffer, position)
        if parsed is None:
            return None
        item, position = parsed
        items.append(item)
    return items, position


def _item(buffer: bytearray, position: int) -> tuple[Item, int] | None:
    end = buffer.find(CRLF, position)
    if end < 0:
        return None
    kind = buffer[position]
    if kind == INTEGER:
        return int(buffer[position + 1 : end]), end + 2
    if kind != BULK:
        raise RespError(bytes(buffer[position:end]).decode(errors="replace"))
    start = end + 2
    stop = start + int(buffer[position + 1 : end])
    if stop + 2 > len(buffer):
        return None
    return bytes(buffer[start:stop]), stop + 2
