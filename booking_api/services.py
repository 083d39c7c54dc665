"""What handlers use, created by the app's lifespan and kept in `app.state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import asyncpg
from starlette.requests import Request

from booking_api import auth
from booking_api.metrics import ApiMetrics
from booking_api.relay import Relay
from shared.redis_connect import AnyRedis
from shared.settings import ApiSettings


@dataclass(frozen=True)
class Services:
    """What handlers use; created by the lifespan, kept in `app.state.services`."""

    settings: ApiSettings
    pool: asyncpg.Pool
    redis: AnyRedis
    verifier: auth.CachingVerifier
    relay: Relay
    metrics: ApiMetrics


def services(request: Request) -> Services:
    return cast(Services, request.app.state.services)
