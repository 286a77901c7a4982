"""The leader lock and its fencing token: ``holder:epoch``, checked by every assignment
(assign.lua), so a leader that lost the lock cannot place anything any more."""

from __future__ import annotations

from redis.asyncio import Redis

from hodei.plugin.data.keys import Keys
from hodei.plugin.data.replies import maybe_text, text
from hodei.plugin.data.scripts import Call, Scripts


class Leadership:
    def __init__(self, redis: Redis, keys: Keys, scripts: Scripts) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts

    async def acquire(self, holder: str, ttl_ms: int) -> str | None:
        """Take or keep the lock (Redis election); the token while this holder leads."""
        value = await self.scripts.run(
            Call("leader", [self.keys.leader, self.keys.leader_epoch], [holder, ttl_ms])
        )
        return maybe_text(value) if value else None

    async def take(self, holder: str, ttl_ms: int) -> str:
        """Take the token because another authority (Consul's lock) made us the leader."""
        value = await self.scripts.run(
            Call("take_leader", [self.keys.leader, self.keys.leader_epoch], [holder, ttl_ms])
        )
        return text(value)

    async def release(self, token: str) -> bool:
        return bool(await self.scripts.run(Call("release_leader", [self.keys.leader], [token])))

    async def holder(self) -> str | None:
        return maybe_text(await self.redis.get(self.keys.leader))
