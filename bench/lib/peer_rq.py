"""RQ as a peer: a worker pool of 4 SimpleWorkers (no fork per job: RQ's default forking
worker runs ~25 jobs/s here, so this is RQ at its fastest), results kept as RQ does."""

from __future__ import annotations

import sys

import peer_signal
from redis import Redis
from rq import Queue

CONFIG = "rq worker-pool -n 4, SimpleWorker (no fork per job)"


def noop() -> None:
    peer_signal.done()


def spawn() -> None:
    peer_signal.run_true()
    peer_signal.done()


def worker_argv(redis_url: str) -> list[list[str]]:
    return [
        [
            sys.executable,
            "-m",
            "rq.cli",
            "worker-pool",
            "-u",
            redis_url,
            "-n",
            "4",
            "-w",
            "rq.worker.SimpleWorker",
            "-l",
            "WARNING",
            "bench",
        ]
    ]


class Producer:
    def __init__(self, redis_url: str) -> None:
        self.redis = Redis.from_url(redis_url)
        self.queue = Queue("bench", connection=self.redis)

    def enqueue(self, variant: str, n: int) -> None:
        function = noop if variant == "noop" else spawn
        for _ in range(n):
            self.queue.enqueue(function)

    def close(self) -> None:
        self.redis.close()
