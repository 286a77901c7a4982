"""Structured logging: one JSON object per line, correlation ids as fields."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

# Attributes a LogRecord has by default; anything else came through ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


CORRELATION = ("invocation_id", "attempt", "worker_id")


def render_human(entry: dict[str, Any]) -> str:
    """One JSON log entry as a terminal line: time, level, component, message, ids."""
    line = (
        f"{str(entry.get('ts', ''))[11:23]} {str(entry.get('level', '')).upper():<7} "
        f"{entry.get('component', ''):<8} {entry.get('message', '')}"
    )
    ids = " ".join(f"{k}={entry[k]}" for k in CORRELATION if k in entry)
    if ids:
        line += f"  [{ids}]"
    if "exception" in entry:
        line += "\n" + str(entry["exception"])
    return line


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.entry(record), default=str)

    def entry(self, record: logging.LogRecord) -> dict[str, Any]:
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
        return entry


class HumanFormatter(JsonFormatter):
    def format(self, record: logging.LogRecord) -> str:
        return render_human(self.entry(record))


def setup(component: str, level: str = "info", style: str | None = None) -> None:
    """Send every logger of the process to stderr tagged with ``component``: JSON lines,
    or terminal lines when ``style`` (default ``HODEI_LOG_FORMAT``) is ``human``."""
    style = style or os.environ.get("HODEI_LOG_FORMAT", "json")
    handler = logging.StreamHandler(sys.stderr)
    formatter = HumanFormatter if style == "human" else JsonFormatter
    handler.setFormatter(formatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def inv(invocation_id: str, attempt: int | None = None, **more: Any) -> dict[str, Any]:
    """The ``extra=`` of a log line about one invocation."""
    fields: dict[str, Any] = {"invocation_id": invocation_id, **more}
    if attempt is not None:
        fields["attempt"] = attempt
    return fields
