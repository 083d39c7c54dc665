"""Who is calling: `Authorization: Bearer <jwt>` to `Claims`, or 401/403."""

from __future__ import annotations

import math
import time
from typing import Protocol

from starlette.requests import Request

from booking_api.errors import ApiError
from shared.tokens import Claims, InvalidToken, TokenVerifier


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if header is None:
        raise unauthorized("Authentication token required")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("Authorization must be 'Bearer <token>'")
    return token.strip()


class Verifier(Protocol):
    def verify(self, token: str) -> Claims: ...


def caller(request: Request, verifier: Verifier) -> Claims:
    """The verified claims of the request's bearer token."""
    try:
        return verifier.verify(bearer_token(request))
    except InvalidToken:
        raise unauthorized("Invalid authentication token") from None


def admin(request: Request, verifier: Verifier) -> Claims:
    """The caller's claims when they carry the admin role; 403 otherwise."""
    claims = caller(request, verifier)
    if not claims.is_admin:
        raise ApiError(403, "forbidden", "Admin rights required")
    return claims


class CachingVerifier:
    """Verify each distinct token once and reuse its claims until it expires.

    Clients send the same token with every request; checking its signature
    again costs more than the rest of a booking's Python work. Only tokens
    that verified are kept, so `nbf` was already in the past; `exp` is checked
    on every use.
    """

    def __init__(self, verifier: TokenVerifier, max_entries: int = 10_000) -> None:
        self._verifier = verifier
        self._max_entries = max_entries
        # token -> (claims, expiry as a POSIX timestamp or +inf); oldest first.
        self._claims: dict[str, tuple[Claims, float]] = {}

    def verify(self, token: str) -> Claims:
        cached = self._claims.get(token)
        if cached is not None and time.time() < cached[1]:
            return cached[0]
        claims = self._verifier.verify(token)
        if len(self._claims) >= self._max_entries:
            del self._claims[next(iter(self._claims))]
        expiry = claims.expires_at.timestamp() if claims.expires_at else math.inf
        self._claims[token] = (claims, expiry)
        return claims
