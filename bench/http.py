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
sys.path[:] = [
    p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))
]

import argparse
import asyncio
import socket
import statistics
import subprocess
import time

import aiohttp
from redis.asyncio import Redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(*args: str, redis_url: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    env.update(HODEI_REDIS_URL=redis_url, HODEI_KEY_PREFIX="hodei-bench", HODEI_LOG_LEVEL="warning")
    return subprocess.Popen([sys.executable, "-m", "hodei.cli", *args], env=env)


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
    http_port, grpc_port = free_port(), free_port()
    procs = [
        spawn(
            "server",
            "--grpc-port",
            str(grpc_port),
            "--metrics-port",
            "-1",
            "--max-queue",
            "1000000",
            redis_url=redis_url,
        ),
        spawn(
            "agent",
            "--server",
            f"127.0.0.1:{grpc_port}",
            "--worker-id",
            "bench",
            "--metrics-port",
            "-1",
            "--health-port",
            "-1",
            "--job-slots",
            "16",
            "--runtimes",
            "process",
            redis_url=redis_url,
        ),
        spawn("gateway", "--port", str(http_port), "--max-queue", "1000000", redis_url=redis_url),
    ]
    url = f"http://127.0.0.1:{http_port}"
    results: dict[str, list[float]] = {"submits_per_s": [], "sync_p50_ms": [], "sync_p99_ms": []}
    try:
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            for _ in range(200):
                try:
                    async with session.get(f"{url}/v1/workers") as r:
                        if r.status == 200 and (await r.json())["workers"]:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            # "parked" needs a label no worker has: submits measure the gateway alone.
            for name, spec in (
                ("parked", {"command": ["true"], "labels": {"never": "x"}}),
                ("noop", {"command": ["/bin/true"]}),
            ):
                async with session.put(f"{url}/v1/functions/{name}", json=spec) as r:
                    assert r.status in (200, 201)
            await sync_latency(session, url, 30)  # warm-up
            for _ in range(rounds):
                results["submits_per_s"].append(await submits(session, url, 3000, 32))
                latencies = sorted(await sync_latency(session, url, 300))
                results["sync_p50_ms"].append(statistics.median(latencies))
                results["sync_p99_ms"].append(latencies[int(len(latencies) * 0.99)])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)
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
