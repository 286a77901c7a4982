"""Leader election through Consul: a session (TTL, lock-delay) and a KV lock, watched with
blocking queries.

Consul decides who leads; Redis still holds the fencing token that ``assign.lua`` checks,
so a leader whose session expired while it was paused cannot place anything once its
successor took the token.

Timings (https://developer.hashicorp.com/consul/docs/dynamic-app-config/sessions and
agent/consul/session_ttl.go): every server renews its session every TTL/3. Consul
invalidates a session 2 x TTL after its last renewal (a TTL is a lower bound; Consul's
leader doubles it), which releases the lock; nobody may then take it for the lock-delay.
A standby's blocking query on the key returns the moment the lock is released, so it takes
over 2 x TTL + lock-delay after the leader's last renewal at the latest (45 s with the
defaults 15 s and 15 s), and at once after a clean shutdown, which releases the lock
without lock-delay. Nobody polls: between renewals a standby waits in a blocking query (a
read), and tries to acquire (a Raft write) only when the lock is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import consul

from hodei.consul import duration
from hodei.plugin.data.leadership import Leadership
from hodei.tasks import raise_if_cancelled

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
        self.index = 0
        self.renew_due = 0.0
        self.free_since: float | None = None

    @property
    def is_leader(self) -> bool:
        return self.token is not None

    @property
    def renew_every_s(self) -> float:
        return self.session_ttl_s / 3

    def _set(self, token: str | None) -> None:
        if token != self.token:
            log.info(
                "leadership %s through consul (token %s)",
                "acquired" if token else "lost",
                token or self.token,
            )
            self.token = token
            self.changed.set()

    async def renew_session(self) -> None:
        """Create the session, or renew it when due; a session Consul invalidated (while
        this process was paused or cut off) ends any leadership held under it."""
        if self.session is not None and time.monotonic() < self.renew_due:
            return
        if self.session is not None:
            try:
                await self.client.session.renew(self.session)
            except consul.NotFound:
                log.warning("consul: leader session %s was invalidated", self.session)
                self.session = None
                self._set(None)
        if self.session is None:
            self.session = await self.client.session.create(
                name=f"hodei-leader-{self.holder}",
                ttl=self.session_ttl_s,
                lock_delay=self.lock_delay_s,
                behavior="release",
            )
        self.renew_due = time.monotonic() + self.renew_every_s

    async def watch(self) -> dict[str, Any] | None:
        """The lock's entry once it changed (a blocking query), or at the next renewal; at
        once while waiting out a lock-delay."""
        wait = max(0.05, self.renew_due - time.monotonic())
        blocking = self.index if self.free_since is None else 0
        index, entry = await self.client.kv.get(
            self.key, index=blocking or None, wait=duration(wait)
        )
        returned = int(index or 0)
        # Consul's rules for blocking queries: start over when the index goes backwards,
        # never block on an index below 1.
        self.index = 0 if returned < self.index else max(1, returned)
        found: dict[str, Any] | None = entry
        return found

    async def lead(self) -> None:
        """We hold the lock: take (or keep) the Redis fencing token, refreshing its TTL."""
        self._set(await self.leadership.take(self.holder, self.session_ttl_s * 1000))

    async def step(self) -> None:
        await self.renew_session()
        entry = await self.watch()
        holder = (entry or {}).get("Session")
        if holder and holder == self.session:
            self.free_since = None
            await self.lead()
            return
        self._set(None)
        if holder:
            self.free_since = None
            return
        now = time.monotonic()
        if self.free_since is None:
            self.free_since = now
        if await self.client.kv.put(self.key, self.holder, acquire=self.session):
            self.free_since = None
            await self.lead()
            return
        # Free but refused: the lock-delay of an invalidated session. Sleep until it should
        # be over (it started no later than we saw the lock free), then every second.
        remaining = self.free_since + self.lock_delay_s - now
        await asyncio.sleep(remaining if remaining > 0.2 else 1.0)

    async def release(self) -> None:
        session, token = self.session, self.token
        self._set(None)
        if token:
            with contextlib.suppress(Exception):
                await self.leadership.release(token)
        if session:
            # Releasing first hands the lock over without lock-delay; destroying then
            # invalidates a session that holds nothing.
            with contextlib.suppress(Exception):
                await self.client.kv.put(self.key, self.holder, release=session)
            with contextlib.suppress(Exception):
                await self.client.session.destroy(session)
            self.session = None

    async def run(self) -> None:
        """Campaign until cancelled; Consul or Redis failing costs the leadership."""
        failures = 0
        try:
            while True:
                raise_if_cancelled()
                try:
                    await self.step()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    log.warning("leader election: consul or redis unavailable: %s", exc)
                    self._set(None)
                    self.renew_due = 0.0  # an invalid session shows up as a failed acquire
                    await asyncio.sleep(min(5.0, 0.25 * 2 ** min(failures, 5)))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.release())
