"""The Lua scripts of ``lua/``: loaded from the package, run by SHA, reloaded when Redis
forgot them (a restart, SCRIPT FLUSH), alone or many in one round trip.

A script whose first line is ``-- @include lib.lua`` gets ``lua/lib.lua`` (the helpers the
scripts share) put in front of it. Such scripts take the context (``Keys.context``) as
ARGV[1]; callers pass only their own arguments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

INCLUDE = "-- @include lib.lua"
Arg = str | bytes | int | float


@cache
def _file(name: str) -> str:
    return (resources.files("hodei.plugin.data") / "lua" / f"{name}.lua").read_text()


def takes_context(name: str) -> bool:
    return _file(name).startswith(INCLUDE)


@cache
def source(name: str) -> str:
    """The script as Redis runs it (with the shared helpers when it includes them)."""
    text = _file(name)
    return _file("lib") + "\n" + text if takes_context(name) else text


@dataclass(frozen=True, slots=True)
class Call:
    """One script call: its name, KEYS and ARGV (without the context)."""

    script: str
    keys: Sequence[str] = ()
    args: Sequence[Arg] = ()


class Scripts:
    def __init__(self, redis: Redis, context: bytes) -> None:
        self.redis = redis
        self.context = context
        self._sha: dict[str, str] = {}

    def _sha_of(self, name: str) -> str:
        sha = self._sha.get(name)
        if sha is None:
            sha = self._sha[name] = hashlib.sha1(source(name).encode()).hexdigest()
        return sha

    def _argv(self, call: Call) -> list[Arg]:
        if takes_context(call.script):
            return [self.context, *call.args]
        return list(call.args)

    async def _load(self, names: set[str]) -> None:
        for name in names:
            await self.redis.script_load(source(name))

    async def run(self, call: Call) -> Any:
        """Run one script; its reply as Redis gave it."""
        argv = self._argv(call)
        sha = self._sha_of(call.script)
        try:
            return await self.redis.evalsha(sha, len(call.keys), *call.keys, *argv)
        except NoScriptError:
            await self._load({call.script})
            return await self.redis.evalsha(sha, len(call.keys), *call.keys, *argv)

    async def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """Run scripts in one round trip (not one transaction: each is atomic on its own),
        in order. A reply is the script's, or the exception it raised."""
        if not calls:
            return []
        replies = await self._pipeline(calls)
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            # A script Redis did not know did not run: load it and run those calls again.
            await self._load({calls[i].script for i in missing})
            again = await self._pipeline([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, calls: Sequence[Call]) -> list[Any]:
        pipe = self.redis.pipeline(transaction=False)
        for call in calls:
            pipe.evalsha(self._sha_of(call.script), len(call.keys), *call.keys, *self._argv(call))
        return list(await pipe.execute(raise_on_error=False))
