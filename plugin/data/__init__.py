"""The data layer: the only code that talks to Redis.

``DataLayer`` bundles one process's Redis clients and its repositories: functions,
invocations, the queue, leases, workers, the event streams, the inboxes and channels,
the leader lock and the callbacks due. Every key is named in ``keys.py``, every record is
read and written in ``records.py``, every multi-key change is one Lua script in ``lua/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

from hodei.domain import Clock, now_ms
from hodei.plugin.data.callbacks import Callbacks
from hodei.plugin.data.connection import connect, unsupported_version
from hodei.plugin.data.events import WAKEUPS_MAXLEN, Events
from hodei.plugin.data.functions import Functions
from hodei.plugin.data.invocations import Invocations
from hodei.plugin.data.keys import Keys
from hodei.plugin.data.leadership import Leadership
from hodei.plugin.data.leases import Leases
from hodei.plugin.data.messages import Inboxes
from hodei.plugin.data.queue import Queue
from hodei.plugin.data.scripts import Scripts
from hodei.plugin.data.settings import DataSettings
from hodei.plugin.data.workers import Workers


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    """What only servers set: how long leases last and how retries back off."""

    lease_ttl_s: float = 20.0
    retry_base_s: float = 1.0
    retry_cap_s: float = 60.0


@dataclass(eq=False)
class DataLayer:
    settings: DataSettings
    name: str
    timing: LeaseTiming = field(default_factory=LeaseTiming)
    clock: Clock = now_ms

    def __post_init__(self) -> None:
        s = self.settings
        self.redis: Redis = connect(s.redis_url, self.name)
        self.blocking: Redis = connect(s.redis_url, f"{self.name}-blocking", blocking=True)
        self.keys = Keys.for_url(s.key_prefix, s.redis_url)
        context = self.keys.context(
            (s.events_maxlen, WAKEUPS_MAXLEN, s.retention_s, s.revision_ttl_s)
        )
        self.scripts = Scripts(self.redis, context)
        self.functions = Functions(self.redis, self.keys, s.revision_ttl_s)
        clock = self.clock
        self.invocations = Invocations(self.redis, self.keys, self.scripts, s, clock)
        self.queue = Queue(self.redis, self.keys, self.scripts, clock)
        t = self.timing
        self.leases = Leases(
            self.redis,
            self.keys,
            self.scripts,
            s,
            lease_ttl_s=t.lease_ttl_s,
            retry_base_s=t.retry_base_s,
            retry_cap_s=t.retry_cap_s,
            clock=clock,
        )
        self.workers = Workers(self.redis, self.keys, self.scripts, s.events_maxlen, clock)
        self.events = Events(self.redis, self.blocking, self.keys)
        self.inboxes = Inboxes(self.redis, self.blocking, self.keys)
        self.leadership = Leadership(self.redis, self.keys, self.scripts)
        self.callbacks = Callbacks(self.redis, self.keys, self.scripts, clock)

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def unsupported(self) -> str:
        """Why this Redis cannot serve Hodei ("" when it can): its version."""
        return unsupported_version(str((await self.redis.info("server"))["redis_version"]))

    async def close(self) -> None:
        await self.redis.aclose()
        await self.blocking.aclose()
