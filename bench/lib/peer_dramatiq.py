"""dramatiq (Redis broker) as a peer: its defaults, 2 processes x 8 threads, acks after
the actor ran, no results middleware, no retries."""

from __future__ import annotations

import os
import sys

import dramatiq
import peer_signal
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/2"))
dramatiq.set_broker(broker)

# An idle consumer polls with a backoff up to the worker timeout (1 s by default): 100 ms,
# so that a batch arriving at idle workers is not timed mostly as dramatiq waking up.
WORKER_TIMEOUT_MS = "100"
CONFIG = "2 processes x 8 threads (its defaults), no retries, worker timeout 100 ms"


@dramatiq.actor(max_retries=0)
def noop() -> None:
    peer_signal.done()


@dramatiq.actor(max_retries=0)
def spawn() -> None:
    peer_signal.run_true()
    peer_signal.done()


def worker_argv() -> list[list[str]]:
    return [
        [sys.executable, "-m", "dramatiq", "peer_dramatiq", "--processes", "2", "--threads", "8"]
    ]


class Producer:
    def __init__(self, redis_url: str) -> None:
        pass  # BENCH_REDIS_URL is set before this module is imported

    def enqueue(self, variant: str, n: int) -> None:
        actor = noop if variant == "noop" else spawn
        for _ in range(n):
            actor.send()

    def close(self) -> None:
        broker.close()
