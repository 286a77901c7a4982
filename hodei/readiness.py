"""Readiness: a server or gateway is ready once what it depends on has answered — Redis
always, Consul when it is configured (a server then needs it to elect a leader and to know
which workers pass). Until then a server's ``grpc.health.v1`` status is NOT_SERVING and a
gateway's ``/readyz`` is 503, so Nomad's deployment health checks (and its auto-revert)
see a process that cannot work instead of one that merely listens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hodei.tasks import raise_if_cancelled

log = logging.getLogger(__name__)
CHECK_INTERVAL_S = 2.0


@dataclass(frozen=True, slots=True)
class Problem:
    code: str
    message: str


@dataclass
class Readiness:
    redis: Any
    consul: Any = None  # a py-consul asyncio client, when Consul is configured
    timeout_s: float = 1.0
    problems: list[Problem] = field(default_factory=lambda: [Problem("starting", "starting")])

    @property
    def ready(self) -> bool:
        return not self.problems

    async def check(self) -> list[Problem]:
        """Ask Redis (PING, and its version) and Consul (its Raft leader) now; the problems,
        [] when ready."""
        problems = []
        try:
            await asyncio.wait_for(self.redis.ping(), self.timeout_s)
            unsupported = await asyncio.wait_for(self.redis.unsupported(), self.timeout_s)
        except Exception:
            problems.append(Problem("redis_unavailable", "the queue store (Redis) is unavailable"))
        else:
            if unsupported:  # its scripts would fail at the first call
                problems.append(Problem("redis_unsupported", unsupported))
        if self.consul is not None:
            try:
                leader = await asyncio.wait_for(self.consul.status.leader(), self.timeout_s)
            except Exception as exc:
                problems.append(Problem("consul_unavailable", f"Consul is unavailable: {exc}"))
            else:
                if not leader:
                    problems.append(Problem("consul_unavailable", "Consul has no leader"))
        if [p.code for p in problems] != [p.code for p in self.problems]:
            if problems:
                log.warning("not ready: %s", "; ".join(p.message for p in problems))
            else:
                log.info("ready: Redis%s answered", " and Consul" if self.consul else "")
        self.problems = problems
        return problems

    async def watch(
        self, on_change: Callable[[bool], Awaitable[None]], interval_s: float = CHECK_INTERVAL_S
    ) -> None:
        """Check every ``interval_s``; ``on_change(ready)`` first and on every change."""
        known: bool | None = None
        while True:
            raise_if_cancelled()
            ready = not await self.check()
            if ready != known:
                known = ready
                await on_change(ready)
            await asyncio.sleep(interval_s)


READINESS = web.AppKey("readiness", Readiness)
