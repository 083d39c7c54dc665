"""Whose transports carry the clients' sockets: uvloop's own, or aiofastnet's.

uvicorn accepts connections through `loop.create_server`, so the loop's
transport class carries every client socket. aiofastnet (aio-libs) offers
Cython transports for any asyncio loop, uvloop included: its `write()` is a
direct `send()` with little bookkeeping around it, and accepting a
connection costs less. In `make bench` one replica accepts about a quarter
more connects per second on it (3,466 against 2,759/s, medians of three runs)
and spends a little less CPU per delivery, at about 5.5 KiB more per
connection (each transport embeds an array of 256 `iovec`s for gathered
writes: 9.9 against 4.4 KiB per idle client). SOCKET_TRANSPORT picks; uvloop
stays the default while memory per idle client matters more than those
(README: Fan-out performance).

Only the listening side changes: Redis connections keep uvloop's transports
(`gateway/reply_stream.py` takes one over with `set_protocol`).
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
