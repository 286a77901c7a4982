"""Leader election through a Redis lock with a fencing token.

The lock's value ``holder:epoch`` is the fencing token: every scheduling write
(``assign.lua``) checks it, so a leader that lost the lock (paused, partitioned) cannot
place work any more even before it notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from hodei.plugin.keys import Keys
from hodei.plugin.scripts import RedisClient, Scripts

log = logging.getLogger(__name__)


class LeaderLock(Protocol):
    """What the scheduler and the monitor need of an election (Redis or Consul)."""

    token: str | None
    changed: asyncio.Event

    @property
    def is_leader(self) -> bool: ...

    async def run(self) -> None: ...

    async def release(self) -> None: ...


class RedisLeaderLock:
    def __init__(
        self, redis: RedisClient, keys: Keys, scripts: Scripts, holder: str, ttl_s: float
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.holder = holder
        self.ttl_s = ttl_s
        self.token: str | None = None
        self.changed = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self.token is not None

    async def try_acquire(self) -> bool:
        """Take or renew the lock; updates ``token`` and signals ``changed`` on a change."""
        value = await self.scripts.run(
            "leader",
            [self.keys.leader, self.keys.leader_epoch],
            [self.holder, int(self.ttl_s * 1000)],
        )
        token = value.decode() if value else None
        if token != self.token:
            log.info(
                "leadership %s (token %s)", "acquired" if token else "lost", token or self.token
            )
            self.token = token
            self.changed.set()
        return token is not None

    async def release(self) -> None:
        if self.token:
            await self.scripts.run("release_leader", [self.keys.leader], [self.token])
            self.token = None
            self.changed.set()

    async def run(self) -> None:
        """Campaign forever: renew at a third of the TTL, retry at the same pace."""
        try:
            while True:
                try:
                    await self.try_acquire()
                except Exception:
                    log.warning("leader election: Redis unavailable", exc_info=True)
                    if self.token is not None:
                        self.token = None
                        self.changed.set()
                await asyncio.sleep(self.ttl_s / 3)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.release())
