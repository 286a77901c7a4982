"""Every Redis key and channel Hodei uses, in one place.

All keys share a prefix (``hodei`` by default) so one Redis can host several
installations and tests can use their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse


def database_of(redis_url: str) -> int:
    """The database number a Redis URL selects (``/3`` or ``?db=3``; 0 by default)."""
    parsed = urlparse(redis_url)
    path = parsed.path.strip("/")
    if path.isdigit():
        return int(path)
    db = parse_qs(parsed.query).get("db", ["0"])[0]
    return int(db) if db.isdigit() else 0


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "hodei"
    # Pub/sub channels are shared by every database of a server: they carry the database
    # number too, so installations on other databases of the same Redis never hear ours.
    database: int = 0

    @classmethod
    def for_url(cls, prefix: str, redis_url: str) -> Keys:
        return cls(prefix, database_of(redis_url))

    # Functions: one JSON string per function, plus the set of names.
    def function(self, name: str) -> str:
        return f"{self.prefix}:fn:{name}"

    @property
    def functions(self) -> str:
        return f"{self.prefix}:fns"

    # Invocations: a hash per record, a capped log list, and an index by creation time.
    @property
    def invocation_prefix(self) -> str:
        return f"{self.prefix}:inv:"

    def invocation(self, invocation_id: str) -> str:
        return f"{self.invocation_prefix}{invocation_id}"

    def logs(self, invocation_id: str) -> str:
        return f"{self.prefix}:inv:{invocation_id}:logs"

    @property
    def invocations(self) -> str:
        return f"{self.prefix}:invs"

    @property
    def inflight(self) -> str:
        """Hash: function name -> invocations queued or running (for concurrency limits)."""
        return f"{self.prefix}:inflight"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    @property
    def callbacks(self) -> str:
        """Zset: finished invocations whose callback is due, by the time it is due."""
        return f"{self.prefix}:callbacks"

    # Scheduling: the ready queue, retries waiting for their backoff, leases by deadline,
    # the dead-letter index.
    @property
    def queue(self) -> str:
        return f"{self.prefix}:queue"

    @property
    def sequence(self) -> str:
        return f"{self.prefix}:queue:seq"

    @property
    def parked(self) -> str:
        """Zset: queued invocations no worker of the current fleet can take."""
        return f"{self.prefix}:parked"

    @property
    def delayed(self) -> str:
        return f"{self.prefix}:delayed"

    @property
    def leases(self) -> str:
        return f"{self.prefix}:leases"

    @property
    def dead(self) -> str:
        return f"{self.prefix}:dead"

    # Workers: a hash per worker (capacity, reservations, state), the jobs leased to it,
    # the set of all workers and their last heartbeat.
    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    def worker_jobs(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}:jobs"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def heartbeats(self) -> str:
        return f"{self.prefix}:heartbeats"

    # The seed's event bus: a capped stream of domain events.
    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    # Leader election: the lock (value "holder:epoch") and the epoch counter (fencing token).
    @property
    def leader(self) -> str:
        return f"{self.prefix}:leader"

    @property
    def leader_epoch(self) -> str:
        return f"{self.prefix}:leader:epoch"

    # Pub/sub channels (not keys): completions, and per-server delivery of assignments.
    @property
    def completed_channel(self) -> str:
        return f"{self.prefix}:{self.database}:completed"

    def server_channel(self, server_id: str) -> str:
        return f"{self.prefix}:{self.database}:server:{server_id}"
