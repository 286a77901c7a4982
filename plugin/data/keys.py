"""Every Redis key and channel Hodei uses, in one place.

All keys share a prefix (``hodei`` by default) so one Redis can host several
installations and tests can use their own. The Lua scripts never spell a key themselves:
they get the names they need from here (``Keys.context``).
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


@dataclass(frozen=True)
class Keys:
    prefix: str = "hodei"
    # Pub/sub channels are shared by every database of a server: they carry the database
    # number too, so installations on other databases of the same Redis never hear ours.
    database: int = 0

    @classmethod
    def for_url(cls, prefix: str, redis_url: str) -> Keys:
        return cls(prefix, database_of(redis_url))

    # -- functions: the current revision of each, and every revision's spec -----------
    def function(self, name: str) -> str:
        """String: the function's current revision."""
        return f"{self.function_prefix}{name}"

    @property
    def function_prefix(self) -> str:
        return f"{self.prefix}:fn:"

    @property
    def functions(self) -> str:
        """Set: the names of the registered functions."""
        return f"{self.prefix}:fns"

    @property
    def revision_prefix(self) -> str:
        return f"{self.prefix}:rev:"

    def revision(self, function: str, revision: str) -> str:
        """Hash: one revision of a function spec (immutable): the spec as JSON and what
        the scripts need of it (demand, limits)."""
        return f"{self.revision_prefix}{function}:{revision}"

    # -- invocations: a hash per record, its log list, indexes by creation -------------
    @property
    def invocation_prefix(self) -> str:
        return f"{self.prefix}:inv:"

    def invocation(self, invocation_id: str) -> str:
        return f"{self.invocation_prefix}{invocation_id}"

    LOGS_SUFFIX = ":logs"

    def logs(self, invocation_id: str) -> str:
        return f"{self.invocation_prefix}{invocation_id}{self.LOGS_SUFFIX}"

    @property
    def invocations(self) -> str:
        """Zset: every invocation by creation (ms * 1000 + sequence)."""
        return f"{self.prefix}:invs"

    @property
    def function_index_prefix(self) -> str:
        return f"{self.prefix}:invs:fn:"

    def function_index(self, function: str) -> str:
        """Zset: the invocations of one function by creation."""
        return f"{self.function_index_prefix}{function}"

    @property
    def indexed_functions(self) -> str:
        """Set: the functions (and one-off job names) that have an index."""
        return f"{self.prefix}:invs:fns"

    @property
    def status_index_prefix(self) -> str:
        return f"{self.prefix}:invs:st:"

    def status_index(self, status: str) -> str:
        """Zset: the final invocations of one status by creation."""
        return f"{self.status_index_prefix}{status}"

    @property
    def inflight(self) -> str:
        """Hash: function name -> invocations queued or running (concurrency limits)."""
        return f"{self.prefix}:inflight"

    def idempotency(self, scope: str, function: str, key: str) -> str:
        return f"{self.prefix}:idem:{scope}:{function}:{key}"

    @property
    def callbacks(self) -> str:
        """Zset: finished invocations whose callback is due, by the time it is due."""
        return f"{self.prefix}:callbacks"

    # -- scheduling ----------------------------------------------------------------------
    @property
    def queue(self) -> str:
        """Zset: the ready queue, by position (priority and ageing folded in)."""
        return f"{self.prefix}:queue"

    @property
    def sequence(self) -> str:
        return f"{self.prefix}:queue:seq"

    @property
    def parked_prefix(self) -> str:
        return f"{self.prefix}:parked:"

    def parked(self, function: str, revision: str) -> str:
        """Zset: queued invocations of one revision no worker of the fleet can take (same
        scores as the queue)."""
        return f"{self.parked_prefix}{function}:{revision}"

    @property
    def parked_revisions(self) -> str:
        """Set: "function:revision" of every non-empty parked set."""
        return f"{self.prefix}:parked"

    @property
    def delayed(self) -> str:
        """Zset: retries waiting for their backoff, by the time they are due."""
        return f"{self.prefix}:delayed"

    @property
    def waiting(self) -> str:
        """Zset: every queued invocation (ready, parked or delayed) by its queue deadline."""
        return f"{self.prefix}:waiting"

    @property
    def depth(self) -> str:
        """Hash: queued invocations per priority, and their payload bytes ("bytes")."""
        return f"{self.prefix}:depth"

    @property
    def leases(self) -> str:
        """Zset: running invocations by lease deadline."""
        return f"{self.prefix}:leases"

    @property
    def dead(self) -> str:
        """Zset: failed invocations whose retries ran out, by when they failed."""
        return f"{self.prefix}:dead"

    # -- workers ---------------------------------------------------------------------------
    @property
    def worker_prefix(self) -> str:
        return f"{self.prefix}:worker:"

    JOBS_SUFFIX = ":jobs"

    def worker(self, worker_id: str) -> str:
        return f"{self.worker_prefix}{worker_id}"

    def worker_jobs(self, worker_id: str) -> str:
        return f"{self.worker_prefix}{worker_id}{self.JOBS_SUFFIX}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def heartbeats(self) -> str:
        return f"{self.prefix}:heartbeats"

    # -- messages between processes ----------------------------------------------------
    @property
    def events(self) -> str:
        """Stream: the seed's event bus, capped (what /v1/events shows)."""
        return f"{self.prefix}:events"

    @property
    def wakeups(self) -> str:
        """Stream: what may let the scheduler place something (work queued, capacity
        freed, a worker changed), capped; the scheduler blocks on it."""
        return f"{self.prefix}:sched"

    @property
    def inbox_prefix(self) -> str:
        return f"{self.prefix}:inbox:"

    def inbox(self, server_id: str) -> str:
        """List: assignments and cancels for the agents connected to one server."""
        return f"{self.inbox_prefix}{server_id}"

    @property
    def leader(self) -> str:
        """String "holder:epoch": the leader lock, whose value is the fencing token."""
        return f"{self.prefix}:leader"

    @property
    def leader_epoch(self) -> str:
        return f"{self.prefix}:leader:epoch"

    @property
    def completed_channel(self) -> str:
        return f"{self.prefix}:{self.database}:completed"

    @property
    def callback_channel(self) -> str:
        return f"{self.prefix}:{self.database}:callbacks"

    @property
    def answer_channel_prefix(self) -> str:
        return f"{self.prefix}:{self.database}:answers:"

    def answer_channel(self, gateway_id: str) -> str:
        """The final records and outputs of the calls the gateway ``gateway_id`` waits on."""
        return f"{self.answer_channel_prefix}{gateway_id}"

    # -- what every script gets as ARGV[1] (lua/lib.lua reads it in this order) ---------
    CONTEXT_FIELDS = (
        "invocation_prefix",
        "queue",
        "parked_prefix",
        "parked_revisions",
        "delayed",
        "waiting",
        "depth",
        "leases",
        "dead",
        "inflight",
        "callbacks",
        "events",
        "wakeups",
        "invocations",
        "function_index_prefix",
        "indexed_functions",
        "status_index_prefix",
        "revision_prefix",
        "worker_prefix",
        "inbox_prefix",
        "completed_channel",
        "callback_channel",
        "leader",
        "sequence",
        "answer_channel_prefix",
        "function_prefix",
    )

    def context(self, limits: tuple[int, ...]) -> bytes:
        """The scripts' context: the key names above, then ``limits`` (events maxlen,
        wake-up stream maxlen, retention s, revision ttl s), newline-separated."""
        names = [getattr(self, f) for f in self.CONTEXT_FIELDS]
        return "\n".join([*names, self.LOGS_SUFFIX, self.JOBS_SUFFIX, *map(str, limits)]).encode()
