"""Read a request's JSON body with a size cap: every failure is a 422."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from booking_api.errors import invalid

MAX_BODY_BYTES = 64 * 1024


async def read_json(request: Request) -> Any:
    """The decoded body; 422 when it is larger than 64 KiB or not JSON."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large()
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large()
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise invalid("the body is not valid JSON") from None


def too_large() -> Exception:
    return invalid(f"the body is larger than {MAX_BODY_BYTES} bytes")
