"""JSON log lines with every token redacted."""

from __future__ import annotations

import io
import logging

import orjson

from shared.logs import REDACTED, JsonFormatter, redact
from shared.tokens import mint_token

TOKEN = mint_token("t" * 40, 5)


def test_query_string_token_is_redacted() -> None:
    """`?token=` in an access-log line keeps the rest of the URL."""
    line = redact(f"GET /ws/events/1?token={TOKEN}&x=1 HTTP/1.1")
    assert TOKEN not in line
    assert line == f"GET /ws/events/1?token={REDACTED}&x=1 HTTP/1.1"


def test_bearer_and_bare_jwts_are_redacted() -> None:
    """A bearer credential and a JWT anywhere in the text are hidden."""
    line = redact(f"Authorization: Bearer {TOKEN}; refresh {TOKEN}")
    assert TOKEN not in line
    assert line.count(REDACTED) == 2


def test_formatter_emits_one_json_object_with_extras() -> None:
    """Each record is one JSON line with level, logger, message and `extra` fields."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("seatcast.test.logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("client %s connected", 7, extra={"url": f"/ws?token={TOKEN}"})
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = orjson.loads(lines[0])
    assert entry["level"] == "warning"
    assert entry["logger"] == "seatcast.test.logs"
    assert entry["message"] == "client 7 connected"
    assert entry["url"] == f"/ws?token={REDACTED}"
    assert TOKEN not in lines[0]
