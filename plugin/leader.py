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

from hodei.plugin.data.connection import REDIS_DOWN, Outage
from hodei.plugin.data.leadership import Leadership
from hodei.tasks import raise_if_cancelled

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
    def __init__(self, leadership: Leadership, holder: str, ttl_s: float) -> None:
        self.leadership = leadership
        self.holder = holder
        self.ttl_s = ttl_s
        self.token: str | None = None
        self.changed = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self.token is not None

    def _set(self, token: str | None) -> None:
        if token != self.token:
            log.info(
                "leadership %s (token %s)", "acquired" if token else "lost", token or self.token
            )
            self.token = token
            self.changed.set()

    async def try_acquire(self) -> bool:
        """Take or renew the lock; updates ``token`` and signals ``changed`` on a change."""
        self._set(await self.leadership.acquire(self.holder, int(self.ttl_s * 1000)))
        return self.token is not None

    async def release(self) -> None:
        token = self.token
        self._set(None)
        if token:
            await self.leadership.release(token)

    async def run(self) -> None:
        """Campaign for ever: renew at a third of the TTL, retry at the same pace. While
        Redis is away nobody can hold the lock: step down at once."""
        outage = Outage("leader election", log)
        try:
            while True:
                raise_if_cancelled()
                try:
                    await self.try_acquire()
                    outage.recovered()
                except REDIS_DOWN as exc:
                    outage.failed(exc)
                    self._set(None)
                await asyncio.sleep(self.ttl_s / 3)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.release())
