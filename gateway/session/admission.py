"""Who may open a WebSocket here: path and origin, then the replica's state and the token.

The connection asks as soon as the upgrade request is read, and everything
is decided in that call, with no await: checking the connection limit and
registering the session cannot interleave with another connect. The
contract's order: a foreign `Origin` is refused with HTTP 403 before the
handshake; everything else is accepted first and then closed with its code
(1012 while draining, 1013 when full, 1008 for a missing or bad token).
"""

from __future__ import annotations

import logging
import re
from typing import Final
from urllib.parse import parse_qsl

from gateway.session.session import POLICY_VIOLATION, Services, Session
from gateway.wire.connection import SERVICE_RESTART, SHUTDOWN_REASON, WebSocketConnection
from gateway.wire.handshake import Upgrade
from shared.tokens import Claims, InvalidToken

# `/ws` and `/ws/events/{eventId}`; the group is the event id, checked by the session.
WEBSOCKET_PATH: Final = re.compile(r"/ws(?:/events/([^/]+))?")
TRY_AGAIN_LATER: Final = 1013
FULL_REASON: Final = "Too many connections, try again later"
TOKEN_REQUIRED: Final = "Authentication token required"
TOKEN_INVALID: Final = "Invalid authentication token"

logger = logging.getLogger(__name__)


class WebSocketEndpoint:
    """Admits WebSocket connections into sessions of one replica."""

    def __init__(self, services: Services) -> None:
        self._services = services

    def open(self, connection: WebSocketConnection, upgrade: Upgrade) -> None:
        match = WEBSOCKET_PATH.fullmatch(upgrade.path)
        if match is None:
            _log(connection, upgrade, "404")
            connection.refuse(404, "No WebSocket endpoint at this path")
            return
        settings = self._services.settings
        if not origin_allowed(settings.allowed_origins, upgrade.header(b"origin")):
            _log(connection, upgrade, "403")
            connection.refuse(403, "Origin not allowed")
            return
        verdict = self._verdict(upgrade)
        head = connection.accept(
            ping_interval=settings.ping_interval_seconds,
            ping_timeout=settings.ping_timeout_seconds,
        )
        if not isinstance(verdict, Claims):
            _log(connection, upgrade, f"closed {verdict[0]}")
            connection.close_now(*verdict, prefix=head)
            return
        _log(connection, upgrade, "accepted")
        session = Session(connection, head, self._services, verdict)
        self._services.sessions.add(session)
        connection.listen(session)
        session.start(match[1])

    def _verdict(self, upgrade: Upgrade) -> Claims | tuple[int, str]:
        """The token's claims, or the (code, reason) to close the connection with."""
        sessions = self._services.sessions
        if sessions.draining:
            return SERVICE_RESTART, SHUTDOWN_REASON
        if sessions.full:
            return TRY_AGAIN_LATER, FULL_REASON
        token = bearer_token(upgrade.query, upgrade.header(b"authorization"))
        if token is None:
            return POLICY_VIOLATION, TOKEN_REQUIRED
        try:
            return self._services.verifier.verify(token)
        except InvalidToken:
            return POLICY_VIOLATION, TOKEN_INVALID


def _log(connection: WebSocketConnection, upgrade: Upgrade, outcome: str) -> None:
    """An access line, as uvicorn writes one per HTTP request (tokens are redacted on output)."""
    if logger.isEnabledFor(logging.INFO):
        peer = connection.transport.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "-"
        logger.info(f'{client} - "WebSocket {upgrade.target}" {outcome}')


def origin_allowed(allowed: tuple[str, ...], origin: str | None) -> bool:
    """Browsers always send `Origin`; clients that send none are not browsers and pass."""
    if not allowed or origin is None or "*" in allowed:
        return True
    return origin.rstrip("/") in allowed


def bearer_token(query: str, authorization: str | None) -> str | None:
    """`?token=` (the last one, as Starlette reads it), else an `Authorization: Bearer` value."""
    values = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "token"]
    if values and values[-1]:
        return values[-1]
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None
