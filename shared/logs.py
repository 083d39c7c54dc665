"""JSON logs, one object per line on stderr, with every token redacted.

Tokens reach logs through URLs (`?token=…` in uvicorn's access log), headers
and exception texts, so redaction runs on the final line, whatever logged it.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

REDACTED = "[redacted]"
_SECRETS = re.compile(
    r"(?P<query>(?:token|access_token|jwt)=)[^&\s\"']+"
    r"|(?P<bearer>Bearer\s+)[^\s\"']+"
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
    re.IGNORECASE,
)
# Attributes every LogRecord has; the rest are the caller's `extra=` fields.
_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


def redact(text: str) -> str:
    """Replace JWTs, `token=` query values and bearer credentials."""

    def hide(match: re.Match[str]) -> str:
        prefix = match.group("query") or match.group("bearer") or ""
        return prefix + REDACTED

    return _SECRETS.sub(hide, text)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: time, level, logger, message, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        line = orjson.dumps(entry, default=str).decode()
        return redact(line)


def configure(level: str) -> None:
    """Send every logger, uvicorn's included, through the JSON formatter on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """A `log_config` for uvicorn that keeps its loggers on our JSON handler."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
        },
    }
