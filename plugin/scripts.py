"""The Lua scripts of ``lua/``, registered once per Redis client.

redis-py's ``register_script`` sends EVALSHA and falls back to EVAL (re-loading the
script) on NOSCRIPT, so a Redis restart or SCRIPT FLUSH is handled transparently.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript

# redis-py types replies as unions of bytes and str (it cannot know decode_responses);
# Hodei's clients never decode, so replies are treated as the bytes they are.
RedisClient = Any

NAMES = (
    "enqueue",
    "assign",
    "finish",
    "cancel",
    "expire_queued",
    "promote",
    "renew",
    "leader",
    "release_leader",
    "take_leader",
    "register",
    "worker_state",
    "accept",
    "append_logs",
    "claim_callbacks",
    "park",
    "unpark",
)


def source(name: str) -> str:
    return (resources.files("hodei.plugin") / "lua" / f"{name}.lua").read_text()


class Scripts:
    def __init__(self, redis: RedisClient) -> None:
        self._scripts: dict[str, AsyncScript] = {n: redis.register_script(source(n)) for n in NAMES}

    async def run(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        return await self._scripts[name](keys=keys, args=args, client=client)
