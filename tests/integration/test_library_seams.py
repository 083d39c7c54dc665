"""The private corners of other libraries the code relies on, one test each: loud when an upgrade moves them.

Each seam lives in one module of ours and degrades or breaks silently if a
release changes it; pyproject.toml bounds each library below its next minor
version until these pass on it (docs/dependencies.md).
"""

from __future__ import annotations

import inspect

import jwt
import uvicorn
from redis.asyncio import ConnectionPool
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.fanin.reply_stream import redis_connection_transport
from shared.quiet_server import DatedServerState, QuietServer
from shared.settings import JwtKeys
from shared.tokens import TokenVerifier
from tests.conftest import JWT_SECRET


def test_pyjwt_keeps_what_the_token_fast_path_uses() -> None:
    """shared/tokens.py: PyJWT's `_merge_options`, `_validate_claims` and `_jws` (its PyJWS)."""
    decoder = jwt.PyJWT()
    assert callable(decoder._merge_options)
    assert callable(decoder._validate_claims)
    assert isinstance(decoder._jws, jwt.PyJWS)
    assert TokenVerifier(JwtKeys(secret=JWT_SECRET, public_key=None)).fast_path


async def test_redis_py_connections_keep_their_stream_writer(redis_url: str) -> None:
    """gateway/fanin/reply_stream.py: a connected redis-py connection's transport, via `_writer`."""
    pool = ConnectionPool.from_url(redis_url)
    connection = pool.make_connection()
    await connection.connect()
    try:
        transport = redis_connection_transport(connection)
        assert not transport.is_closing()
        assert callable(transport.set_protocol)
    finally:
        await connection.disconnect()
        await pool.disconnect()


def test_uvicorn_keeps_the_main_loop_and_headers_the_quiet_server_overrides() -> None:
    """shared/quiet_server.py: `Server.main_loop` and `ServerState.default_headers`."""
    assert inspect.iscoroutinefunction(uvicorn.Server.main_loop)
    assert QuietServer.main_loop is not uvicorn.Server.main_loop
    assert ServerState().default_headers == []
    assert isinstance(DatedServerState(uvicorn.Config(app=None)).default_headers, list)


def test_uvicorn_builds_the_websocket_protocol_with_the_three_keywords() -> None:
    """gateway/wire/connection.py is built as `ws(config=, server_state=, app_state=)` on upgrade."""
    for protocol in (HttpToolsProtocol, H11Protocol):
        source = inspect.getsource(protocol.handle_websocket_upgrade)
        for keyword in ("config=", "server_state=", "app_state="):
            assert keyword in source, f"{protocol.__name__} no longer passes {keyword}"
