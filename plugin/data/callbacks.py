"""Callbacks due: finishing an invocation that has an ``X-Callback-Url`` puts it in a due
set (in the same script that records the result); gateways claim due ones with a lease
and deliver them, retrying with backoff."""

from __future__ import annotations

from redis.asyncio import Redis

from hodei.domain import Clock, now_ms
from hodei.plugin.data.keys import Keys
from hodei.plugin.data.replies import texts
from hodei.plugin.data.scripts import Call, Scripts


class Callbacks:
    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts, clock: Clock = now_ms) -> None:
        self.clock = clock
        self.redis = redis
        self.keys = keys
        self.scripts = scripts

    async def claim(self, claim_ms: int, limit: int) -> list[str]:
        """Due callbacks, each pushed out by ``claim_ms`` (taken over by another gateway
        only if this one dies while delivering)."""
        claimed = await self.scripts.run(
            Call("claim_callbacks", [self.keys.callbacks], [self.clock(), claim_ms, limit])
        )
        return texts(claimed)

    async def done(self, invocation_id: str, outcome: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.keys.callbacks, invocation_id)
        pipe.hset(self.keys.invocation(invocation_id), "callback_status", outcome)
        await pipe.execute()

    async def failed(self, invocation_id: str) -> int:
        """Count a failed delivery; the number of failed deliveries so far."""
        return int(
            await self.redis.hincrby(self.keys.invocation(invocation_id), "callback_attempts", 1)
        )

    async def retry_in(self, invocation_id: str, delay_ms: int) -> None:
        await self.redis.zadd(self.keys.callbacks, {invocation_id: self.clock() + delay_ms})
