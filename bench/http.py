"""HTTP benchmark: async submits per second through one gateway process, and synchronous
no-op invoke latency through the whole stack (gateway, Redis, server, one agent with the
process runtime). Every part runs as its own process.

Run: python bench/http.py [--redis-url URL]   (ends with key=value lines)
"""

from __future__ import annotations

import os
import sys

# This file is named like the standard library's http package, which aiohttp imports: take
# the script's own folder off the import path before anything imports http.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.append(os.path.join(HERE, "lib"))

import argparse
import asyncio
import statistics
import time

import aiohttp
from bench_hodei import HodeiStack
from bench_procs import supervised
from redis.asyncio import Redis


async def submits(session: aiohttp.ClientSession, url: str, total: int, clients: int) -> float:
    remaining = total

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            async with session.post(f"{url}/v1/functions/parked/invoke?async=true", data=b"x") as r:
                assert r.status == 202, await r.text()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return total / (time.perf_counter() - started)


async def sync_latency(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    latencies = []
    for _ in range(n):
        started = time.perf_counter()
        async with session.post(f"{url}/v1/functions/noop/invoke", data=b"") as r:
            await r.read()
            assert r.status == 200, r.status
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def run(redis_url: str, rounds: int) -> dict[str, list[float]]:
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    results: dict[str, list[float]] = {"submits_per_s": [], "sync_p50_ms": [], "sync_p99_ms": []}
    try:
        with supervised() as procs:
            stack = HodeiStack(procs, redis_url)
            stack.start("bench", job_slots=16)
            url = stack.url
            connector = aiohttp.TCPConnector(limit=64)
            async with aiohttp.ClientSession(connector=connector) as session:
                await stack.wait_ready(session)
                await stack.wait_workers(session, ["bench"])
                # "parked" needs a label no worker has: submits measure the gateway alone.
                for name, spec in (
                    ("parked", {"command": ["true"], "labels": {"never": "x"}}),
                    ("noop", {"command": ["/bin/true"]}),
                ):
                    status, text = await stack.put_function(session, name, spec)
                    assert status in (200, 201), text
                await sync_latency(session, url, 30)  # warm-up
                for _ in range(rounds):
                    results["submits_per_s"].append(await submits(session, url, 3000, 32))
                    latencies = sorted(await sync_latency(session, url, 300))
                    results["sync_p50_ms"].append(statistics.median(latencies))
                    results["sync_p99_ms"].append(latencies[int(len(latencies) * 0.99)])
    finally:
        await redis.flushdb()
        await redis.aclose()
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = asyncio.run(run(args.redis_url, args.rounds))
    print(f"# http benchmark: {args.rounds} rounds, median and spread")
    for key, values in results.items():
        print(f"{key}={statistics.median(values):.2f}")
        print(f"{key}_spread={min(values):.2f}-{max(values):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
