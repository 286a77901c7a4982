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

IMAGE = "hodei-test/busybox:latest"
COMMAND = ["sh", "-c", "cat"]
PAYLOAD = b"ping from the benchmark"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(*args: str, redis_url: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    env.update(HODEI_REDIS_URL=redis_url, HODEI_KEY_PREFIX="hodei-bench", HODEI_LOG_LEVEL="warning")
    return subprocess.Popen([sys.executable, "-m", "hodei.cli", *args], env=env)


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
    http_port, grpc_port = free_port(), free_port()
    procs = [
        spawn("server", "--grpc-port", str(grpc_port), "--metrics-port", "-1", redis_url=redis_url),
        spawn(
            "agent",
            "--server",
            f"127.0.0.1:{grpc_port}",
            "--worker-id",
            "bench-docker",
            "--metrics-port",
            "-1",
            "--health-port",
            "-1",
            "--runtimes",
            "docker",
            redis_url=redis_url,
        ),
        spawn("gateway", "--port", str(http_port), redis_url=redis_url),
    ]
    url = f"http://127.0.0.1:{http_port}"
    hodei: list[float] = []
    raw: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    async with session.get(f"{url}/v1/workers") as r:
                        workers = (await r.json())["workers"] if r.status == 200 else []
                        if any("docker" in w.get("runtimes", []) for w in workers):
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            spec = {"runtime": "docker", "image": IMAGE, "command": COMMAND}
            async with session.put(f"{url}/v1/functions/echo", json=spec) as r:
                assert r.status in (200, 201), await r.text()
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
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)
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
