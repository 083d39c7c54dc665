"""WebSocket frames a server sends, built once and written to many sockets."""

from __future__ import annotations

import struct

# FIN bit plus opcode 1 (text); server frames are never masked.
TEXT_FIN = 0x81
SHORT_LIMIT = 126
MEDIUM_LIMIT = 1 << 16


def text_frame(payload: bytes) -> bytes:
    """One complete unmasked text frame carrying `payload` (RFC 6455 section 5.2)."""
    size = len(payload)
    if size < SHORT_LIMIT:
        header = struct.pack("!BB", TEXT_FIN, size)
    elif size < MEDIUM_LIMIT:
        header = struct.pack("!BBH", TEXT_FIN, 126, size)
    else:
        header = struct.pack("!BBQ", TEXT_FIN, 127, size)
    return header + payload
