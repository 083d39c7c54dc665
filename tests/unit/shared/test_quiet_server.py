"""The uvicorn server both processes run: no periodic wake-ups, a current `Date`, a prompt exit."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.utils import formatdate, parsedate_to_datetime

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from shared.quiet_server import DatedServerState, QuietServer
from tests.support.ports import free_port
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(30)


def _app() -> Starlette:
    return Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])


def _config(**options: object) -> uvicorn.Config:
    # No log_config: the test process's logging stays as it was.
    config = uvicorn.Config(_app(), port=free_port(), log_config=None, **options)  # type: ignore[arg-type]
    config.load()
    return config


@asynccontextmanager
async def _serving(server: QuietServer) -> AsyncIterator[asyncio.Task[None]]:
    """`server` serving once started; stopped (forced) on the way out, whatever happened."""
    serving = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    try:
        await async_wait_until(started, timeout=10, what="serving")
        yield serving
    finally:
        server.should_exit = server.force_exit = True
        await asyncio.wait([serving])


def test_the_date_is_made_when_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `Date` header follows the clock with no timer: read in a later second, it is new."""
    state = DatedServerState(_config(server_header=False, headers=[("X-Served-By", "seatcast")]))
    monkeypatch.setattr(time, "time", lambda: 1_800_000_000.25)
    first = state.default_headers
    assert first == [
        (b"date", formatdate(1_800_000_000, usegmt=True).encode()),
        (b"x-served-by", b"seatcast"),
    ]
    assert state.default_headers is first  # the same second: made once
    monkeypatch.setattr(time, "time", lambda: 1_800_000_001.0)
    assert state.default_headers[0] == (b"date", formatdate(1_800_000_001, usegmt=True).encode())


def test_no_date_when_uvicorn_is_told_not_to_send_one() -> None:
    state = DatedServerState(_config(date_header=False))
    state.default_headers = [(b"date", b"assigned by uvicorn")]  # ignored: made when read
    assert state.default_headers == [(b"server", b"uvicorn")]


async def test_an_idle_server_has_no_timer_and_exit_wakes_it() -> None:
    """Serving with nobody connected, the loop holds no timer (uvicorn's holds its 0.1 s tick);
    a real request's `Date` is now; `should_exit` set from another thread, as a signal handler
    would, ends `serve` at once."""
    config = _config()
    server = QuietServer(config)
    async with _serving(server) as serving:
        # asyncio's own loop keeps its timers here (the tests run on it, not on uvloop).
        loop = asyncio.get_running_loop()
        assert [t for t in loop._scheduled if not t.cancelled()] == []  # type: ignore[attr-defined]
        async with httpx.AsyncClient(headers={"Connection": "close"}) as client:
            response = await client.get(f"http://127.0.0.1:{config.port}/")
        assert response.text == "ok"
        served_at = parsedate_to_datetime(response.headers["date"]).timestamp()
        assert abs(served_at - time.time()) < 5
        asked = time.monotonic()
        threading.Thread(target=setattr, args=(server, "should_exit", True)).start()
        await asyncio.wait_for(asyncio.shield(serving), timeout=5)
        assert time.monotonic() - asked < 2


async def test_a_request_limit_still_ends_the_server() -> None:
    """With `limit_max_requests` (which only uvicorn's ticks check) the server keeps uvicorn's
    own loop, so the limit still stops it."""
    config = _config(limit_max_requests=1, limit_max_requests_jitter=0)
    server = QuietServer(config)
    async with _serving(server) as serving:
        async with httpx.AsyncClient(headers={"Connection": "close"}) as client:
            assert (await client.get(f"http://127.0.0.1:{config.port}/")).text == "ok"
        await asyncio.wait_for(asyncio.shield(serving), timeout=5)
