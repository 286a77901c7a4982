"""Delivery of ``X-Callback-Url`` callbacks: a POST of the result, retried with backoff.

Finishing an invocation that has a callback puts it in a due set (atomically, in the same
script that records the result), so a callback survives the gateway that accepted the
call. Any gateway claims due callbacks with a short lease and delivers each in its own
task, so one slow receiver never holds up the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import aiohttp

from hodei import backoff
from hodei.api.settings import GatewaySettings
from hodei.api.waiter import Completions
from hodei.logs import inv
from hodei.plugin.keys import Keys
from hodei.plugin.scripts import RedisClient, Scripts
from hodei.plugin.store import Store, now_ms

log = logging.getLogger(__name__)
CLAIM_MS = 60_000
MAX_PARALLEL = 64


class CallbackDispatcher:
    def __init__(
        self,
        redis: RedisClient,
        keys: Keys,
        scripts: Scripts,
        store: Store,
        completions: Completions,
        settings: GatewaySettings,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.scripts = scripts
        self.store = store
        self.completions = completions
        self.settings = settings
        self.slots = asyncio.Semaphore(MAX_PARALLEL)
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.settings.callback_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                while True:
                    self.completions.any_completion.clear()
                    try:
                        claimed = await self.scripts.run(
                            "claim_callbacks",
                            [self.keys.callbacks],
                            [now_ms(), CLAIM_MS, MAX_PARALLEL],
                        )
                    except Exception as exc:
                        log.warning("callbacks: cannot claim: %s", exc)
                        claimed = []
                    for raw in claimed:
                        task = asyncio.create_task(self._deliver(session, raw.decode()))
                        self.tasks.add(task)
                        task.add_done_callback(self.tasks.discard)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.completions.any_completion.wait(), 1.0)
            finally:
                for task in self.tasks:
                    task.cancel()
                await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _deliver(self, session: aiohttp.ClientSession, invocation_id: str) -> None:
        async with self.slots:
            key = self.keys.invocation(invocation_id)
            url = (await self.redis.hget(key, "callback_url") or b"").decode()
            record, output = await self.store.result(invocation_id)
            headers = {
                "Content-Type": "application/octet-stream",
                "X-Hodei-Invocation-Id": invocation_id,
                "X-Hodei-Status": str(record.status),
                "X-Hodei-Function": record.function,
            }
            if record.exit_code is not None:
                headers["X-Hodei-Exit-Code"] = str(record.exit_code)
            try:
                async with session.post(url, data=output, headers=headers) as response:
                    delivered = response.status < 300
                    detail = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                delivered, detail = False, f"{type(exc).__name__}: {exc}"
            if delivered:
                await self._done(invocation_id, "delivered")
                log.info(
                    "invocation %s: callback delivered to %s",
                    invocation_id,
                    url,
                    extra=inv(invocation_id),
                )
                return
            attempts = int(await self.redis.hincrby(key, "callback_attempts", 1))
            if attempts >= self.settings.callback_attempts:
                await self._done(invocation_id, f"gave up after {attempts} attempts: {detail}")
                log.warning(
                    "invocation %s: callback to %s abandoned: %s",
                    invocation_id,
                    url,
                    detail,
                    extra=inv(invocation_id),
                )
                return
            delay = backoff.delay(
                attempts,
                self.settings.callback_base_s,
                self.settings.callback_cap_s,
                random.Random(),
            )
            await self.redis.zadd(
                self.keys.callbacks, {invocation_id: now_ms() + int(delay * 1000)}
            )
            log.info(
                "invocation %s: callback to %s failed (%s), retry in %.1fs",
                invocation_id,
                url,
                detail,
                delay,
                extra=inv(invocation_id),
            )

    async def _done(self, invocation_id: str, outcome: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.keys.callbacks, invocation_id)
        pipe.hset(self.keys.invocation(invocation_id), "callback_status", outcome)
        await pipe.execute()
