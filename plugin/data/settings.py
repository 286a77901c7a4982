"""The settings every process that shares one Redis must agree on (gateways and servers
both inherit them): where the data is, and the budgets the scripts enforce."""

from __future__ import annotations

from dataclasses import dataclass

from hodei.config import EnvSettings

DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class DataSettings(EnvSettings):
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "hodei"
    # Admission: queued invocations (ready, parked and waiting for a retry) and their
    # payload bytes; beyond either, 429 with Retry-After.
    max_queue: int = 100_000
    max_queue_bytes: int = 1 << 30
    # One priority level is worth this much waiting (no starvation).
    ageing_s: float = 60.0
    events_maxlen: int = 100_000
    # Finished invocations (record, result, logs) are kept this long (0 = for ever).
    retention_s: int = 7 * DAY_S
    idempotency_ttl_s: int = DAY_S
    # An invocation's logs: at most this many bytes (then a truncation marker), and the
    # last this many lines.
    log_bytes_per_invocation: int = 1 << 20
    log_lines_kept: int = 10_000

    @property
    def revision_ttl_s(self) -> int:
        """How long a function revision outlives its last use: past the retention of any
        record that refers to it, plus the longest a queued or running one can take."""
        return self.retention_s + 2 * DAY_S if self.retention_s > 0 else 0
