"""A tiny synchronous client for the booking API, for the terminal tool and `make run`.

Standard library only (urllib): one request at a time is all these callers need.
Failures become two exceptions with one-line messages: `ApiUnreachable` (no
answer at all) and `ApiRequestFailed` (the API answered with an error body).
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

TIMEOUT_SECONDS = 10.0


class ApiUnreachable(Exception):
    """Nothing answered at the API's address (refused, unknown host, timeout)."""


class ApiRequestFailed(Exception):
    """The API answered with an error status; `code` is its error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({status} {code})")
        self.status = status
        self.code = code


def check_base_url(url: str) -> str:
    """The base URL without a trailing slash; ValueError for anything but http(s)://host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the API URL must look like http://127.0.0.1:8000, got {url!r}")
    return url.rstrip("/")


def request_json(
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = TIMEOUT_SECONDS,
) -> Any:
    """Send one request and return the decoded JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        raise _api_error(error) from None
    except (urllib.error.URLError, OSError) as error:
        raise ApiUnreachable(f"cannot reach {_origin(url)}: {_reason(error)}") from None


def _api_error(error: urllib.error.HTTPError) -> ApiRequestFailed:
    try:
        detail = json.loads(error.read())["error"]
        return ApiRequestFailed(error.code, str(detail["code"]), str(detail["message"]))
    except (ValueError, KeyError, TypeError):
        return ApiRequestFailed(error.code, "http_error", f"HTTP {error.code} {error.reason}")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _reason(error: Exception) -> str:
    cause: object = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused (is it running?)"
    if isinstance(cause, socket.gaierror):
        return "unknown host"
    if isinstance(cause, TimeoutError):
        return "timed out"
    return str(cause)
