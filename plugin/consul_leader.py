"""Leader election through Consul: a session (TTL, lock-delay) and a KV lock.

Consul decides who leads; Redis still holds the fencing token that ``assign.lua`` checks,
so a leader whose session expired while it was paused cannot place anything once its
successor took the token. A standby takes over within the session TTL plus the lock-delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import consul

from hodei.plugin.data.leadership import Leadership

log = logging.getLogger(__name__)


class ConsulLeaderLock:
    def __init__(
        self,
        client: Any,
        leadership: Leadership,
        holder: str,
        key: str,
        session_ttl_s: int,
        lock_delay_s: int,
    ) -> None:
        self.client = client
        self.leadership = leadership
        self.holder = holder
        self.key = key
        self.session_ttl_s = session_ttl_s
        self.lock_delay_s = lock_delay_s
        self.session: str | None = None
        self.token: str | None = None
        self.changed = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self.token is not None

    def _set(self, token: str | None) -> None:
        if token != self.token:
            log.info(
                "leadership %s through consul (token %s)",
                "acquired" if token else "lost",
                token or self.token,
            )
            self.token = token
            self.changed.set()

    async def renew_session(self) -> bool:
        """Create the session, or renew it; False when Consul says it is gone."""
        if self.session is None:
            self.session = await self.client.session.create(
                name=f"hodei-leader-{self.holder}",
                ttl=self.session_ttl_s,
                lock_delay=self.lock_delay_s,
                behavior="release",
            )
            return True
        try:
            await self.client.session.renew(self.session)
            return True
        except consul.NotFound:
            log.warning("consul: leader session %s expired", self.session)
            self.session = None
            return False

    async def try_acquire(self) -> bool:
        if not await self.renew_session():
            self._set(None)
            return False
        acquired = await self.client.kv.put(self.key, self.holder, acquire=self.session)
        if not acquired:
            self._set(None)
            return False
        self._set(await self.leadership.take(self.holder, self.session_ttl_s * 1000))
        return True

    async def release(self) -> None:
        session, token = self.session, self.token
        self._set(None)
        if token:
            with contextlib.suppress(Exception):
                await self.leadership.release(token)
        if session:
            with contextlib.suppress(Exception):
                await self.client.kv.put(self.key, self.holder, release=session)
            with contextlib.suppress(Exception):
                await self.client.session.destroy(session)
            self.session = None

    async def run(self) -> None:
        """Campaign forever: a leader renews at a third of the TTL; a standby tries again
        every second (the lock-delay keeps it out for a while after a session dies)."""
        try:
            while True:
                try:
                    await self.try_acquire()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("leader election: consul or redis unavailable: %s", exc)
                    self._set(None)
                await asyncio.sleep(self.session_ttl_s / 3 if self.is_leader else 1.0)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.release())
