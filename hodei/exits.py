"""The CLI's exit codes (documented in ``hodei --help`` and the README)."""

from __future__ import annotations

import enum


class Exit(enum.IntEnum):
    OK = 0
    FUNCTION_FAILED = 1
    USAGE = 2
    UNREACHABLE = 3
    STILL_RUNNING = 4
    REFUSED = 5
