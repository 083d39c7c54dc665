"""Settings: defaults, validation, and the one-line exit at start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.settings import (
    API_VARIABLES,
    GATEWAY_VARIABLES,
    SettingsError,
    api_settings,
    gateway_settings,
    load_or_exit,
)

SECRET = "s" * 32
API_ENV = {"JWT_SECRET": SECRET, "DATABASE_URL": "postgresql://u@db:5432/seatcast"}


def test_gateway_defaults_follow_the_contract() -> None:
    """Unset variables take the contract's defaults."""
    settings = gateway_settings({"JWT_SECRET": SECRET})
    assert (settings.host, settings.port) == ("127.0.0.1", 8001)
    assert settings.max_subscriptions == 100
    assert settings.max_connections is None
    assert settings.max_client_messages_per_second == 100
    assert settings.drain_seconds == 10.0
    assert settings.allowed_origins == ()
    assert settings.log_level == "info"


def test_api_defaults_follow_the_contract() -> None:
    """The booking API listens on 8000 and keeps 1000 history entries for a day."""
    settings = api_settings(API_ENV)
    assert settings.port == 8000
    assert (settings.history_size, settings.history_ttl_seconds) == (1000, 86400)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({}, "JWT_SECRET is required"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET must be at least 32 bytes"),
        ({"JWT_SECRET": SECRET, "PORT": "eighty"}, "PORT must be an integer"),
        ({"JWT_SECRET": SECRET, "PORT": "70000"}, "PORT must be between"),
        ({"JWT_SECRET": SECRET, "REDIS_URL": "http://x"}, "REDIS_URL must start with"),
        ({"JWT_SECRET": SECRET, "REDIS_URL": "redis://h:port"}, "REDIS_URL has an invalid port"),
        ({"JWT_SECRET": SECRET, "LOG_LEVEL": "loud"}, "LOG_LEVEL must be one of"),
        ({"JWT_SECRET": SECRET, "MAX_SUBSCRIPTIONS": "0"}, "MAX_SUBSCRIPTIONS must be between"),
        ({"JWT_SECRET": SECRET, "MAX_CONNECTIONS": "-1"}, "MAX_CONNECTIONS must be between"),
        ({"JWT_SECRET": SECRET, "DRAIN_SECONDS": "soon"}, "DRAIN_SECONDS must be a number"),
        ({"JWT_SECRET": SECRET, "ALLOWED_ORIGINS": "example.com"}, "ALLOWED_ORIGINS must list"),
        ({"JWT_PUBLIC_KEY": "not a pem"}, "JWT_PUBLIC_KEY must be a PEM"),
    ],
)
def test_bad_gateway_setting_names_the_variable(env: dict[str, str], fragment: str) -> None:
    """Each bad value raises one line that names the variable."""
    with pytest.raises(SettingsError, match=fragment) as caught:
        gateway_settings(env)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"JWT_SECRET": SECRET}, "DATABASE_URL is required"),
        ({**API_ENV, "DATABASE_URL": "mysql://x/y"}, "DATABASE_URL must start with postgresql://"),
        ({**API_ENV, "DATABASE_URL": "postgresql:///nohost"}, "DATABASE_URL has no host"),
        ({**API_ENV, "HISTORY_SIZE": "0"}, "HISTORY_SIZE must be between"),
        ({**API_ENV, "CORS_ORIGINS": "ftp://x"}, "CORS_ORIGINS must list"),
    ],
)
def test_bad_api_setting_names_the_variable(env: dict[str, str], fragment: str) -> None:
    """The booking API's own variables are validated the same way."""
    with pytest.raises(SettingsError, match=fragment):
        api_settings(env)


def test_password_never_appears_in_errors() -> None:
    """A malformed URL is quoted in the error with its password hidden."""
    with pytest.raises(SettingsError) as caught:
        api_settings({**API_ENV, "DATABASE_URL": "mysql://user:hunter2@db/x"})
    assert "hunter2" not in str(caught.value)


def test_origins_are_split_and_normalised() -> None:
    """Comma-separated origins lose spaces and trailing slashes."""
    settings = gateway_settings(
        {"JWT_SECRET": SECRET, "ALLOWED_ORIGINS": "https://a.example/, http://b.example:8080"}
    )
    assert settings.allowed_origins == ("https://a.example", "http://b.example:8080")


def test_secret_is_not_in_the_repr() -> None:
    """Settings can be logged without leaking the JWT key."""
    assert SECRET not in repr(gateway_settings({"JWT_SECRET": SECRET}))


def test_command_line_overrides_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--host` and `--port` win over HOST and PORT."""
    monkeypatch.setenv("JWT_SECRET", SECRET)
    monkeypatch.setenv("PORT", "9000")
    settings = load_or_exit(gateway_settings, "gateway", ["--host", "0.0.0.0", "--port", "9100"])
    assert (settings.host, settings.port) == ("0.0.0.0", 9100)


def test_load_or_exit_prints_one_line_and_exits_2() -> None:
    """A bad setting at start: one line on stderr, exit status 2, no traceback."""
    code = "from shared.settings import load_or_exit, gateway_settings; load_or_exit(gateway_settings, 'gateway', [])"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": "/usr/bin", "PORT": "x", "JWT_SECRET": SECRET},
        capture_output=True,
        text=True,
        timeout=30,
        cwd=".",
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "seatcast: PORT must be an integer, got 'x'"


def test_variable_lists_cover_the_contract() -> None:
    """Every variable of contract section 1 is read by the process it belongs to."""
    assert {
        "HOST",
        "PORT",
        "DATABASE_URL",
        "REDIS_URL",
        "JWT_SECRET",
        "JWT_PUBLIC_KEY",
        "LOG_LEVEL",
        "HISTORY_SIZE",
        "HISTORY_TTL_SECONDS",
        "CORS_ORIGINS",
    } <= set(API_VARIABLES)
    assert {
        "HOST",
        "PORT",
        "REDIS_URL",
        "JWT_SECRET",
        "JWT_PUBLIC_KEY",
        "ALLOWED_ORIGINS",
        "LOG_LEVEL",
        "MAX_SUBSCRIPTIONS",
        "MAX_CONNECTIONS",
        "MAX_CLIENT_MESSAGES_PER_SECOND",
        "DRAIN_SECONDS",
    } <= set(GATEWAY_VARIABLES)
