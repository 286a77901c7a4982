"""taskiq (taskiq-redis RedisStreamBroker: consumer groups, acknowledged after the task
ran) as a peer: its defaults, 2 worker processes x 100 async tasks, no result backend."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import peer_signal
from taskiq_redis import RedisStreamBroker

broker = RedisStreamBroker(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"))

CONFIG = "RedisStreamBroker, 2 processes x 100 async tasks (its defaults), ack when executed"


@broker.task(task_name="noop")
async def noop() -> None:
    peer_signal.done()


@broker.task(task_name="spawn")
async def spawn() -> None:
    await peer_signal.run_true_async()
    peer_signal.done()


def worker_argv() -> list[list[str]]:
    return [
        [
            sys.executable,
            "-m",
            "taskiq",
            "worker",
            "peer_taskiq:broker",
            "--workers",
            "2",
            "--ack-type",
            "when_executed",
            "--log-level",
            "WARNING",
        ]
    ]


class Producer:
    clients = 32

    def __init__(self, redis_url: str) -> None:
        self.started = False

    async def enqueue(self, variant: str, n: int) -> None:
        if not self.started:
            await broker.startup()
            self.started = True
        task: Any = noop if variant == "noop" else spawn
        remaining = n

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await task.kiq()

        await asyncio.gather(*(client() for _ in range(self.clients)))

    async def close(self) -> None:
        if self.started:
            await broker.shutdown()
