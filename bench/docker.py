"""Docker benchmark: a synchronous invoke of a busybox function through the whole stack
(gateway, Redis, server, one agent with the docker runtime, each its own process) against a
raw ``docker run --rm -i`` of the same image and command, alternated in one run so that both
see the same machine.

Needs a Docker engine and the test image (``.ci/test-image``).
Run: python bench/docker.py [--redis-url URL] [--pairs N]   (ends with key=value lines)
"""

from __future__ import annotations

import os
import sys

# bench/http.py shadows the standard library's http package that aiohttp imports.
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

IMAGE = "hodei-test/busybox:latest"
COMMAND = ["sh", "-c", "cat"]
PAYLOAD = b"ping from the benchmark"


async def hodei_invoke(session: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with session.post(f"{url}/v1/functions/echo/invoke", data=PAYLOAD) as r:
        body = await r.read()
        assert r.status == 200 and body == PAYLOAD, (r.status, body)
    return (time.perf_counter() - started) * 1000


async def raw_run() -> float:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "docker",
        "run",
        "--rm",
        "-i",
        IMAGE,
        *COMMAND,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate(PAYLOAD)
    assert proc.returncode == 0 and out == PAYLOAD, (proc.returncode, out)
    return (time.perf_counter() - started) * 1000


async def run(redis_url: str, pairs: int) -> dict[str, list[float]]:
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    hodei: list[float] = []
    raw: list[float] = []
    try:
        with supervised() as procs:
            stack = HodeiStack(procs, redis_url)
            stack.start("bench-docker", runtimes="docker")
            url = stack.url
            async with aiohttp.ClientSession() as session:
                await stack.wait_ready(session)
                await stack.wait_runtime(session, "docker")
                spec = {"runtime": "docker", "image": IMAGE, "command": COMMAND}
                status, text = await stack.put_function(session, "echo", spec)
                assert status in (200, 201), text
                for _ in range(3):  # warm-up: image cache, connections
                    await hodei_invoke(session, url)
                    await raw_run()
                for i in range(pairs):
                    # Alternate which goes first so neither always follows the other.
                    if i % 2:
                        raw.append(await raw_run())
                        hodei.append(await hodei_invoke(session, url))
                    else:
                        hodei.append(await hodei_invoke(session, url))
                        raw.append(await raw_run())
    finally:
        await redis.flushdb()
        await redis.aclose()
    return {"hodei": hodei, "raw": raw}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--pairs", type=int, default=40)
    args = parser.parse_args()
    samples = asyncio.run(run(args.redis_url, args.pairs))
    hodei, raw = samples["hodei"], samples["raw"]
    ratios = sorted(h / r for h, r in zip(hodei, raw, strict=True))
    q = len(ratios) // 4
    print(f"# docker benchmark: {args.pairs} alternated pairs, median and spread (p25-p75)")
    print(f"overhead_ratio={statistics.median(hodei) / statistics.median(raw):.3f}")
    print(f"pair_ratio_p50={statistics.median(ratios):.3f}")
    print(f"pair_ratio_spread={ratios[q]:.3f}-{ratios[-q - 1]:.3f}")
    for name, values in samples.items():
        ordered = sorted(values)
        print(f"{name}_p50_ms={statistics.median(ordered):.1f}")
        print(f"{name}_spread_ms={ordered[q]:.1f}-{ordered[-q - 1]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
