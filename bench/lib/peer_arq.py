"""arq as a peer: 2 worker processes (one asyncio loop each, one per core), max_jobs 32
each, its default result keeping."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import peer_signal
from arq import create_pool
from arq.connections import RedisSettings

CONFIG = "2 processes x max_jobs 32, poll delay 50 ms (default 500 ms: an idle arq polls)"


async def noop(ctx: dict[str, Any]) -> None:
    peer_signal.done()


async def spawn(ctx: dict[str, Any]) -> None:
    await peer_signal.run_true_async()
    peer_signal.done()


class WorkerSettings:
    functions = [noop, spawn]
    redis_settings = RedisSettings.from_dsn(
        os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/4")
    )
    max_jobs = 32
    poll_delay = 0.05


def worker_argv() -> list[list[str]]:
    one = [sys.executable, "-m", "arq", "peer_arq.WorkerSettings"]
    return [one, one]


class Producer:
    clients = 32

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.pool: Any = None

    async def enqueue(self, variant: str, n: int) -> None:
        if self.pool is None:
            self.pool = await create_pool(RedisSettings.from_dsn(self.redis_url))
        remaining = n

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await self.pool.enqueue_job(variant)

        await asyncio.gather(*(client() for _ in range(self.clients)))

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.aclose()
