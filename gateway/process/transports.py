"""Whose transports carry the clients' sockets: uvloop's own, or aiofastnet's.

uvicorn accepts connections through `loop.create_server`, so the loop's
transport class carries every client socket. aiofastnet (aio-libs) offers
Cython transports for any asyncio loop, uvloop included: its `write()` is a
direct `send()` with little bookkeeping around it, and accepting a
connection costs less, at several KiB more per connection (each transport
embeds an array of `iovec`s for gathered writes). SOCKET_TRANSPORT picks;
uvloop stays the default while memory per idle client matters more
(docs/performance.md has the figures).

Only the listening side changes: Redis connections keep uvloop's transports
(gateway/fanin/reply_stream.py takes one over with `set_protocol`).
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Final

import aiofastnet

UVLOOP: Final = "uvloop"
AIOFASTNET: Final = "aiofastnet"


def serve_clients_with(loop: asyncio.AbstractEventLoop, transport: str) -> None:
    """Make `loop.create_server`, which uvicorn calls at start, use `transport`'s transports."""
    if transport == AIOFASTNET:
        # What `aiofastnet.patch_loop` does for create_server, and nothing else.
        loop.create_server = partial(aiofastnet.create_server, loop)  # type: ignore[method-assign]
    elif transport != UVLOOP:
        raise ValueError(f"unknown socket transport {transport!r}")
