"""The handler of Hodei's lambda no-op variant (run by awslambdaric in a warm instance)."""

from __future__ import annotations

from typing import Any


def handler(event: Any, context: Any) -> None:
    return None
