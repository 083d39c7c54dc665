"""Settings read from the environment, validated before anything starts.

Every problem becomes a one-line `SettingsError` naming the variable; the
entry points turn it into a message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NoReturn, TypeVar
from urllib.parse import urlsplit

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster")
MIN_SECRET_BYTES = 32

# Every variable a process reads; deploy tests check manifests against these.
COMMON_VARIABLES = ("HOST", "PORT", "REDIS_URL", "JWT_SECRET", "JWT_PUBLIC_KEY", "LOG_LEVEL")
API_VARIABLES = (
    *COMMON_VARIABLES,
    "DATABASE_URL",
    "HISTORY_SIZE",
    "HISTORY_TTL_SECONDS",
    "CORS_ORIGINS",
)
GATEWAY_VARIABLES = (
    *COMMON_VARIABLES,
    "ALLOWED_ORIGINS",
    "MAX_SUBSCRIPTIONS",
    "MAX_CONNECTIONS",
    "MAX_CLIENT_MESSAGES_PER_SECOND",
    "DRAIN_SECONDS",
    "PING_INTERVAL_SECONDS",
    "PING_TIMEOUT_SECONDS",
    "OUTBOUND_BUFFER_BYTES",
    "WORKERS",
    "SOCKET_TRANSPORT",
)

# SOCKET_TRANSPORT's values; the first is the default (gateway/process/transports.py).
SOCKET_TRANSPORTS = ("uvloop", "aiofastnet")

Env = Mapping[str, str]


class SettingsError(ValueError):
    """A setting is missing or malformed; the message is one line for humans."""


@dataclass(frozen=True)
class JwtKeys:
    """What verifies tokens: the HS256 secret, or a PEM public key instead."""

    # repr=False: settings get logged and printed; keys must never be.
    secret: str | None = field(repr=False)
    public_key: str | None = field(repr=False)


@dataclass(frozen=True)
class CommonSettings:
    host: str
    port: int
    redis_url: str
    jwt: JwtKeys
    log_level: str


@dataclass(frozen=True)
class ApiSettings(CommonSettings):
    database_url: str
    history_size: int
    history_ttl_seconds: int
    cors_origins: tuple[str, ...]


@dataclass(frozen=True)
class GatewaySettings(CommonSettings):
    allowed_origins: tuple[str, ...]
    max_subscriptions: int
    # None: no limit on connections.
    max_connections: int | None
    max_client_messages_per_second: int
    drain_seconds: float
    ping_interval_seconds: float
    ping_timeout_seconds: float
    outbound_buffer_bytes: int
    workers: int
    # Whose transports carry client sockets: "uvloop" or "aiofastnet" (process/transports.py).
    socket_transport: str


def _text(env: Env, name: str, default: str | None = None) -> str:
    value = env.get(name, "").strip()
    if value:
        return value
    if default is None:
        raise SettingsError(f"{name} is required but not set")
    return default


def _int(env: Env, name: str, default: int, low: int, high: int = 2**31) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _optional_int(env: Env, name: str, low: int) -> int | None:
    if not env.get(name, "").strip():
        return None
    return _int(env, name, 0, low)


def _float(env: Env, name: str, default: float, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low:g} and {high:g}, got {raw}")
    return value


def _origins(env: Env, name: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in env.get(name, "").split(",") if o.strip())
    for origin in origins:
        parts = urlsplit(origin)
        if origin != "*" and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise SettingsError(
                f"{name} must list origins like https://example.com, got {origin!r}"
            )
    return origins


def _choice(env: Env, name: str, default: str, choices: Sequence[str]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _redis_url(env: Env) -> str:
    url = _text(env, "REDIS_URL", "redis://127.0.0.1:6379/0")
    parts = urlsplit(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise SettingsError(
            "REDIS_URL must start with redis://, rediss://, unix:// or redis+cluster://, "
            f"got {_hide_password(url)!r}"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise SettingsError(f"REDIS_URL has no host: {_hide_password(url)!r}")
    _check_port("REDIS_URL", url)
    return url


def _database_url(env: Env) -> str:
    url = _text(env, "DATABASE_URL")
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise SettingsError(
            f"DATABASE_URL must start with postgresql://, got {_hide_password(url)!r}"
        )
    if not (parts.hostname or "host=" in parts.query):
        raise SettingsError(f"DATABASE_URL has no host: {_hide_password(url)!r}")
    _check_port("DATABASE_URL", url)
    return url


def _check_port(name: str, url: str) -> None:
    try:
        urlsplit(url).port  # noqa: B018 - the property raises on a malformed port
    except ValueError:
        raise SettingsError(f"{name} has an invalid port: {_hide_password(url)!r}") from None


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _jwt_keys(env: Env) -> JwtKeys:
    public_key = env.get("JWT_PUBLIC_KEY", "").strip() or None
    secret = env.get("JWT_SECRET", "") or None
    if public_key is not None:
        if "-----BEGIN" not in public_key:
            raise SettingsError(
                "JWT_PUBLIC_KEY must be a PEM public key (-----BEGIN PUBLIC KEY-----)"
            )
        return JwtKeys(secret=secret, public_key=public_key)
    if secret is None:
        raise SettingsError("JWT_SECRET is required but not set")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(f"JWT_SECRET must be at least {MIN_SECRET_BYTES} bytes long")
    return JwtKeys(secret=secret, public_key=None)


def _common(env: Env, default_port: int) -> dict[str, object]:
    return {
        "host": _text(env, "HOST", "127.0.0.1"),
        "port": _int(env, "PORT", default_port, 0, 65535),
        "redis_url": _redis_url(env),
        "jwt": _jwt_keys(env),
        "log_level": _choice(env, "LOG_LEVEL", "info", LOG_LEVELS),
    }


def api_settings(env: Env) -> ApiSettings:
    """Read the booking API's settings; raise `SettingsError` on the first bad one."""
    return ApiSettings(
        **_common(env, 8000),  # type: ignore[arg-type]
        database_url=_database_url(env),
        history_size=_int(env, "HISTORY_SIZE", 1000, 1, 10_000_000),
        history_ttl_seconds=_int(env, "HISTORY_TTL_SECONDS", 86400, 1),
        cors_origins=_origins(env, "CORS_ORIGINS"),
    )


def gateway_settings(env: Env) -> GatewaySettings:
    """Read a gateway replica's settings; raise `SettingsError` on the first bad one."""
    return GatewaySettings(
        **_common(env, 8001),  # type: ignore[arg-type]
        allowed_origins=_origins(env, "ALLOWED_ORIGINS"),
        max_subscriptions=_int(env, "MAX_SUBSCRIPTIONS", 100, 1, 100_000),
        max_connections=_optional_int(env, "MAX_CONNECTIONS", 1),
        max_client_messages_per_second=_int(env, "MAX_CLIENT_MESSAGES_PER_SECOND", 100, 1),
        drain_seconds=_float(env, "DRAIN_SECONDS", 10.0, 0.0, 3600.0),
        ping_interval_seconds=_float(env, "PING_INTERVAL_SECONDS", 20.0, 0.1, 3600.0),
        ping_timeout_seconds=_float(env, "PING_TIMEOUT_SECONDS", 20.0, 0.1, 3600.0),
        outbound_buffer_bytes=_int(env, "OUTBOUND_BUFFER_BYTES", 1 << 20, 1024),
        workers=_int(env, "WORKERS", 1, 1, 256),
        socket_transport=_choice(env, "SOCKET_TRANSPORT", SOCKET_TRANSPORTS[0], SOCKET_TRANSPORTS),
    )


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


def _listen_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description=f"Run {prog}; settings come from the environment."
    )
    parser.add_argument("--host", help="listen address (overrides HOST)")
    parser.add_argument("--port", type=int, help="listen port (overrides PORT)")
    return parser.parse_args(list(argv))


def fail(message: str) -> NoReturn:
    """Stop the process at start: one line on stderr, exit status 2."""
    print(f"seatcast: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def load_or_exit(
    loader: Callable[[Env], SettingsT], prog: str, argv: Sequence[str] | None = None
) -> SettingsT:
    """Settings for an entry point: environment, then `--host`/`--port`; exit 2 on error."""
    args = _listen_args(sys.argv[1:] if argv is None else argv, prog)
    try:
        settings = loader(os.environ)
    except SettingsError as error:
        fail(str(error))
    if args.port is not None and not 0 <= args.port <= 65535:
        fail(f"--port must be between 0 and 65535, got {args.port}")
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    return replace(settings, **overrides)
