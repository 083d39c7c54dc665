"""JSON responses encoded once with orjson."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

JSON = "application/json"


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type=JSON)


def raw_json_response(body: bytes, status: int) -> Response:
    """A response whose body is already JSON text (a stored idempotent response)."""
    return Response(body, status, media_type=JSON)
