"""The function registry: each function's current revision, and every revision's spec.

A revision is immutable: replacing a function adds a revision and points the function at
it, so invocations queued or running keep the spec they were accepted with (and a replay
runs the spec the dead letter ran). A revision no longer current expires after the
longest time anything may still refer to it.
"""

from __future__ import annotations

from collections import OrderedDict

from redis.asyncio import Redis

from hodei.domain import JOB_REVISION_PREFIX
from hodei.errors import NotFound
from hodei.plugin.data import records
from hodei.plugin.data.keys import Keys
from hodei.plugin.data.replies import maybe_text, raw, text, texts
from hodei.plugin.models import FunctionSpec

CACHED_REVISIONS = 4096


class Functions:
    def __init__(self, redis: Redis, keys: Keys, revision_ttl_s: int) -> None:
        self.redis = redis
        self.keys = keys
        self.revision_ttl_s = revision_ttl_s
        self._specs: OrderedDict[tuple[str, str], FunctionSpec] = OrderedDict()

    async def put(self, spec: FunctionSpec) -> bool:
        """Store a function (as its new current revision); True when it was created."""
        revision = spec.revision
        key = self.keys.function(spec.name)
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(key)
        pipe.hset(self.keys.revision(spec.name, revision), mapping=records.revision_fields(spec))
        pipe.persist(self.keys.revision(spec.name, revision))
        pipe.set(key, revision)
        pipe.sadd(self.keys.functions, spec.name)
        previous, *_, added = await pipe.execute()
        if previous is not None and text(previous) != revision:
            await self._retire(spec.name, text(previous))
        return bool(added)

    async def store_revision(self, spec: FunctionSpec) -> str:
        """Store the spec of a one-off job as a revision of its own (never a function's:
        see ``JOB_REVISION_PREFIX``). Returns the revision."""
        revision = JOB_REVISION_PREFIX + spec.revision
        key = self.keys.revision(spec.name, revision)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=records.revision_fields(spec))
        if self.revision_ttl_s:
            # Every expiry a job's revision gets is this one, from now: a new one never
            # shortens the last (without EXPIRE's GT and NX, which need Redis 7.0).
            pipe.expire(key, self.revision_ttl_s)
        await pipe.execute()
        return revision

    async def exists(self, name: str) -> bool:
        return bool(await self.redis.exists(self.keys.function(name)))

    async def _retire(self, name: str, revision: str) -> None:
        if self.revision_ttl_s:
            await self.redis.expire(self.keys.revision(name, revision), self.revision_ttl_s)

    async def get(self, name: str) -> FunctionSpec:
        revision = maybe_text(await self.redis.get(self.keys.function(name)))
        if revision is None:
            raise NotFound(f"function {name!r} does not exist")
        return await self.spec(name, revision)

    async def spec(self, function: str, revision: str) -> FunctionSpec:
        """One revision's spec (cached: revisions never change)."""
        cached = self._specs.get((function, revision))
        if cached is not None:
            self._specs.move_to_end((function, revision))
            return cached
        found = await self.redis.hget(self.keys.revision(function, revision), "spec")
        if found is None:
            raise NotFound(f"revision {revision} of {function!r} does not exist")
        spec = records.spec_of(raw(found))
        self._specs[(function, revision)] = spec
        if len(self._specs) > CACHED_REVISIONS:
            self._specs.popitem(last=False)
        return spec

    async def all(self) -> list[FunctionSpec]:
        names = sorted(texts(await self.redis.smembers(self.keys.functions)))
        found = []
        for name in names:
            try:
                found.append(await self.get(name))
            except NotFound:  # deleted meanwhile
                continue
        return found

    async def delete(self, name: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.getdel(self.keys.function(name))
        pipe.srem(self.keys.functions, name)
        revision, _ = await pipe.execute()
        if revision is None:
            raise NotFound(f"function {name!r} does not exist")
        await self._retire(name, text(revision))
