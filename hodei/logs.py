"""Structured logging: one JSON object per line, correlation ids as fields."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# Attributes a LogRecord has by default; anything else came through ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(component: str, level: str = "info") -> None:
    """Send every logger of the process to stderr as JSON lines tagged with ``component``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def inv(invocation_id: str, attempt: int | None = None, **more: Any) -> dict[str, Any]:
    """The ``extra=`` of a log line about one invocation."""
    fields: dict[str, Any] = {"invocation_id": invocation_id, **more}
    if attempt is not None:
        fields["attempt"] = attempt
    return fields
