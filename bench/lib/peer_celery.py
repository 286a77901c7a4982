"""Celery (Redis broker) as a peer: prefork pool, 4 processes (2 per core: the spawn task
waits on its child), acks after the task ran (acks_late, as Hodei acknowledges a result),
no result backend, the usual throughput flags (no heartbeat, gossip, mingle)."""

from __future__ import annotations

import os
import sys

import peer_signal
from celery import Celery

app = Celery("peer_celery", broker=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/1"))
app.conf.update(
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

CONFIG = "prefork -c 4, prefetch 4, acks_late, no result backend"


@app.task(name="noop")
def noop() -> None:
    peer_signal.done()


@app.task(name="spawn")
def spawn() -> None:
    peer_signal.run_true()
    peer_signal.done()


def worker_argv() -> list[list[str]]:
    return [
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "peer_celery",
            "worker",
            "-P",
            "prefork",
            "-c",
            "4",
            "--loglevel",
            "WARNING",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ]
    ]


class Producer:
    def __init__(self, redis_url: str) -> None:
        app.conf.broker_url = redis_url

    def enqueue(self, variant: str, n: int) -> None:
        task = noop if variant == "noop" else spawn
        for _ in range(n):
            task.delay()

    def close(self) -> None:
        pass  # the module (and its connection pool) serves every round
