"""End-to-end benchmark: no-op jobs through Redis, the scheduler, gRPC and one agent with the
process runtime. Server and agent run as their own processes, as in production.

Run: python bench/e2e.py [--redis-url URL] [--jobs N]   (ends with key=value lines)
"""

from __future__ import annotations

import os
import sys

# bench/http.py is named like the standard library's http package: keep this folder off the
# import path so that `import http` (aiohttp, prometheus_client) finds the real one.
sys.path[:] = [
    p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))
]

import argparse
import asyncio
import socket
import statistics
import subprocess
import time
from dataclasses import replace

from redis.asyncio import Redis

from hodei.plugin.models import FunctionSpec, Status
from hodei.plugin.server import ControlPlane
from hodei.plugin.settings import ServerSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Completions:
    """Completion notices from the ``completed`` channel, as a gateway would wait for them."""

    def __init__(self, redis: Redis, channel: str) -> None:
        self.pubsub = redis.pubsub()
        self.channel = channel
        self.waiters: dict[str, asyncio.Future[float]] = {}

    async def start(self) -> None:
        await self.pubsub.subscribe(self.channel)
        self.task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        async for message in self.pubsub.listen():
            if message["type"] == "message":
                waiter = self.waiters.pop(message["data"].decode(), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(time.perf_counter())

    def expect(self, invocation_id: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiters[invocation_id] = future
        return future


async def run(redis_url: str, jobs: int, concurrency: int, sandbox: bool = True) -> dict[str, str]:
    settings = replace(
        ServerSettings.from_env(),
        redis_url=redis_url,
        key_prefix="hodei-bench",
        metrics_port=-1,
        grpc_port=free_port(),
    )
    view = ControlPlane(settings)
    await view.data.redis.flushdb()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HODEI_")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hodei.cli",
            "server",
            "--redis-url",
            redis_url,
            "--key-prefix",
            "hodei-bench",
            "--grpc-port",
            str(settings.grpc_port),
            "--metrics-port",
            "-1",
            "--log-level",
            "warning",
        ],
        env=env,
    )
    agent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hodei.cli",
            "agent",
            "--server",
            f"127.0.0.1:{settings.grpc_port}",
            "--worker-id",
            "bench",
            "--metrics-port",
            "-1",
            "--health-port",
            "-1",
            "--job-slots",
            str(concurrency * 2),
            "--cpu-millicores",
            "1000000",
            "--memory-mb",
            "1000000",
            "--runtimes",
            "process",
            "--log-level",
            "warning",
            *(() if sandbox else ("--process-sandbox", "off", "--process-allow-root")),
        ],
        env=env,
    )
    try:
        for _ in range(300):
            w = await view.data.workers.get("bench")
            if w and w.state == "available":
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("the agent did not connect")
        spec = FunctionSpec.from_dict(
            "noop",
            {
                "command": ["/bin/true"],
                "resources": {"cpu_millicores": 1, "memory_mb": 1},
                "max_retries": 0,
            },
        )
        await view.data.functions.put(spec)
        done = Completions(view.data.redis, view.data.keys.completed_channel)
        await done.start()

        async def one() -> float:
            invocation_id = __import__("uuid").uuid4().hex
            finished = done.expect(invocation_id)
            started = time.perf_counter()
            await view.data.invocations.enqueue(spec.name, b"", invocation_id=invocation_id)
            return (await finished - started) * 1000

        for _ in range(50):  # warm-up
            await one()
        # Latency: one invocation at a time, on an otherwise idle system.
        serial = [await one() for _ in range(300)]
        # Throughput: `concurrency` clients submitting back to back.
        remaining = jobs
        latencies: list[float] = []

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                latencies.append(await one())

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        failed = (await view.data.invocations.recent(status=Status.FAILED, limit=10)).invocations
        serial.sort()
        return {
            "jobs": str(jobs),
            "jobs_per_s": f"{jobs / elapsed:.0f}",
            "p50_ms": f"{statistics.median(serial):.2f}",
            "p99_ms": f"{serial[int(len(serial) * 0.99)]:.2f}",
            "p50_ms_loaded": f"{statistics.median(latencies):.2f}",
            "p99_ms_loaded": f"{sorted(latencies)[int(len(latencies) * 0.99)]:.2f}",
            "failed": str(len(failed)),
        }
    finally:
        agent.terminate()  # first, while its server still answers: a clean drain
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
        server.terminate()
        server.wait(15)
        await view.data.redis.flushdb()
        await view.data.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--unsandboxed",
        action="store_true",
        # The variable too: bench/ab.py gives both versions the same arguments, and a
        # version from before the sandbox knows no such flag (nor any sandbox).
        default=os.environ.get("BENCH_E2E_UNSANDBOXED", "") not in ("", "0"),
        help="run the process runtime without its sandbox (to see what the sandbox costs; "
        "or BENCH_E2E_UNSANDBOXED=1)",
    )
    args = parser.parse_args()
    rounds = [
        asyncio.run(run(args.redis_url, args.jobs, args.concurrency, not args.unsandboxed))
        for _ in range(args.rounds)
    ]
    print(
        f"# e2e benchmark: {args.rounds} rounds, median and spread; python {sys.version.split()[0]}"
    )
    for key in rounds[0]:
        values = [float(r[key]) for r in rounds]
        print(f"{key}={statistics.median(values):g}")
        if len(values) > 1 and key != "jobs":
            print(f"{key}_spread={min(values):g}-{max(values):g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
