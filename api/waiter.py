"""Completion notices: one pub/sub subscription per gateway, fanned out to waiting requests
and to the callback dispatcher. It resubscribes by itself after a Redis outage."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from hodei import backoff
from hodei.plugin.scripts import RedisClient

log = logging.getLogger(__name__)


class Completions:
    def __init__(self, redis: RedisClient, channel: str) -> None:
        self.redis = redis
        self.channel = channel
        self.waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.any_completion = asyncio.Event()

    def expect(self, invocation_id: str) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(invocation_id, []).append(future)
        return future

    def forget(self, invocation_id: str, future: asyncio.Future[None]) -> None:
        futures = self.waiters.get(invocation_id, [])
        if future in futures:
            futures.remove(future)
        if not futures:
            self.waiters.pop(invocation_id, None)

    def _notify(self, invocation_id: str) -> None:
        """Wake the waiters of an id; they read the record to see where it stands."""
        for future in self.waiters.pop(invocation_id, []):
            if not future.done():
                future.set_result(None)
        self.any_completion.set()

    async def run(self) -> None:
        failures = 0
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                failures = 0
                # Whatever finished while we were not subscribed: let waiters re-check.
                for invocation_id in list(self.waiters):
                    self._notify(invocation_id)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._notify(message["data"].decode())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("completion subscription lost: %s", exc)
                await asyncio.sleep(backoff.delay(failures, 0.2, 5.0))
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
