"""Warm instances benchmark: synchronous invokes through the whole stack (gateway, Redis,
server, one agent, each its own process) of four functions, alternated round by round so
that all see the same machine:

- ``warm-py``: a Python handler under the AWS runtime client (process, lambda interface)
- ``stdio-py``: ``cat`` as a stdio process function (a process per invocation)
- ``warm-sh``: a busybox shell Runtime API loop in a container (docker, lambda interface)
- ``cold-sh``: ``cat`` in a busybox container per invocation (docker, stdio)

- ``http-floor``: the same client against an aiohttp server that only echoes (no Hodei):
  what any call through an HTTP server and this client costs here

then warm-py alone: back to back (``serial``), and one call every 50 ms (``sporadic``: the
machine idles between calls, as under light traffic), and the throughput of the warm Python
path with several clients at once.

Needs a Docker engine, the test image (``.ci/test-image``) and awslambdaric.
Run: python bench/warm.py [--redis-url URL] [--rounds N] [--clients N] [--seconds S]
Ends with key=value lines: ``warm_docker_speedup=`` (cold docker p50 / warm docker p50,
target >= 20), ``warm_process_p50_ms=`` (target <= 3 on an idle machine) and what of it
lies beyond the HTTP floor (``warm_process_beyond_http_floor_ms=``).
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
import json
import random
import statistics
import time
from pathlib import Path

import aiohttp
from bench_hodei import HodeiStack
from bench_procs import free_port, supervised
from redis.asyncio import Redis

IMAGE = "hodei-test/busybox:latest"
PAYLOAD = b'{"ping": 1}'
# A folder of the project: a sandboxed function's uid can read it (not the private /tmp).
CODE = Path(__file__).resolve().parent / "functions"
# An echo runtime in busybox shell: next (headers with wget -S), response with the event.
SHELL_RUNTIME = r"""
base=http://$AWS_LAMBDA_RUNTIME_API/2018-06-01/runtime
while wget -q -S -O /tmp/event "$base/invocation/next" 2>/tmp/headers; do
  id=$(sed -n 's/^ *Lambda-Runtime-Aws-Request-Id: *\([^[:space:]]*\).*$/\1/p' /tmp/headers)
  wget -q -O /dev/null --post-file /tmp/event "$base/invocation/$id/response"
done
"""
FUNCTIONS = ("warm-py", "stdio-py", "warm-sh", "cold-sh")
FLOOR = "http-floor"
SPORADIC_GAP_S = 0.05


def specs() -> dict[str, dict[str, object]]:
    warm = {"min": 1, "max": 8, "idle_s": 600}
    return {
        "warm-py": {
            "runtime": "process",
            "interface": "lambda",
            "handler": "echo.handler",
            "env": {"PYTHONPATH": str(CODE)},
            "warm": warm,
            "resources": {"memory_mb": 128},
        },
        "stdio-py": {"runtime": "process", "command": ["cat"]},
        "warm-sh": {
            "runtime": "docker",
            "interface": "lambda",
            "image": IMAGE,
            "handler": "echo",
            "command": ["sh", "-c", SHELL_RUNTIME],
            "warm": warm,
            "resources": {"memory_mb": 64},
        },
        "cold-sh": {"runtime": "docker", "image": IMAGE, "command": ["sh", "-c", "cat"]},
    }


async def invoke(session: aiohttp.ClientSession, url: str, name: str) -> float:
    started = time.perf_counter()
    target = f"{url}/echo" if name == FLOOR else f"{url}/v1/functions/{name}/invoke"
    async with session.post(target, data=PAYLOAD) as r:
        body = await r.read()
        assert r.status == 200 and json.loads(body) == json.loads(PAYLOAD), (name, r.status, body)
    return (time.perf_counter() - started) * 1000


async def throughput(url: str, clients: int, seconds: float) -> float:
    """Invocations per second of warm-py with ``clients`` synchronous callers at once."""
    done = 0
    end = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def caller() -> None:
            nonlocal done
            while time.perf_counter() < end:
                await invoke(session, url, "warm-py")
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(clients)))
        return done / (time.perf_counter() - started)


async def run(redis_url: str, rounds: int, clients: int, seconds: float) -> dict[str, object]:
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    samples: dict[str, list[float]] = {name: [] for name in (*FUNCTIONS, FLOOR)}
    rng = random.Random(14)  # the same orders in every run
    alone: dict[str, list[float]] = {"serial": [], "sporadic": []}
    try:
        with supervised() as procs:
            stack = HodeiStack(procs, redis_url)
            stack.start("bench-warm", runtimes="process,docker")
            url = stack.url
            floor_port = free_port()
            procs.start(
                FLOOR, [sys.executable, os.path.join(HERE, "lib", "echo_http.py"), str(floor_port)]
            )
            urls = {name: url for name in FUNCTIONS} | {FLOOR: f"http://127.0.0.1:{floor_port}"}
            async with aiohttp.ClientSession() as session:
                await stack.wait_ready(session)
                await wait_listening(floor_port)
                await stack.wait_runtime(session, "docker")
                for name, spec in specs().items():
                    status, text = await stack.put_function(session, name, spec)
                    assert status in (200, 201), text
                for _ in range(3):  # warm-up: instances started, image cached, connections open
                    for name in urls:
                        await invoke(session, urls[name], name)
                for _ in range(rounds):
                    # A new order each round, so that no function always follows the same
                    # one (a rotation kept warm-py behind cold-sh, whose container is still
                    # being torn down when the next call comes).
                    order = rng.sample(list(urls), len(urls))
                    for name in order:
                        samples[name].append(await invoke(session, urls[name], name))
                for phase, gap_s in (("serial", 0.0), ("sporadic", SPORADIC_GAP_S)):
                    for _ in range(rounds):
                        if gap_s:
                            await asyncio.sleep(gap_s)
                        alone[phase].append(await invoke(session, url, "warm-py"))
            rate = await throughput(url, clients, seconds)
    finally:
        await redis.flushdb()
        await redis.aclose()
    return {"samples": samples, "alone": alone, "rate": rate}


async def wait_listening(port: int, timeout_s: float = 30.0) -> None:
    until = time.monotonic() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > until:
                raise
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    result = asyncio.run(run(args.redis_url, args.rounds, args.clients, args.seconds))
    samples: dict[str, list[float]] = result["samples"]  # type: ignore[assignment]
    print(f"# warm benchmark: {args.rounds} alternated rounds; p50, p99 and spread (p25-p75)")
    p50 = {}
    for name, values in samples.items():
        ordered = sorted(values)
        key = name.replace("-", "_")
        p50[name] = statistics.median(ordered)
        print(f"{key}_p50_ms={p50[name]:.2f}")
        print(f"{key}_p99_ms={percentile(ordered, 0.99):.2f}")
        print(f"{key}_spread_ms={percentile(ordered, 0.25):.2f}-{percentile(ordered, 0.75):.2f}")
    alone: dict[str, list[float]] = result["alone"]  # type: ignore[assignment]
    for phase, values in alone.items():
        ordered = sorted(values)
        print(f"warm_py_{phase}_p50_ms={statistics.median(ordered):.2f}")
        print(f"warm_py_{phase}_p99_ms={percentile(ordered, 0.99):.2f}")
    print(f"warm_process_jobs_per_s={result['rate']:.0f}  # {args.clients} clients")
    print(f"warm_process_p50_ms={p50['warm-py']:.2f}")
    # What Hodei adds to an HTTP round trip of this client (a difference of medians).
    print(f"warm_process_beyond_http_floor_ms={p50['warm-py'] - p50[FLOOR]:.2f}")
    print(f"warm_docker_speedup={p50['cold-sh'] / p50['warm-sh']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
