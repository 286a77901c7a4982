"""Hodei as a peer: the whole stack as separate processes (one gateway, one server, one
agent with 16 job slots), jobs enqueued over HTTP (``POST /v1/functions/{name}/invoke?
async=true``, 32 concurrent keep-alive clients), completions heard on the Redis completion
channel the servers publish on (what a gateway waits on for a synchronous call: public
inside the deployment, costs nothing extra, unlike relaying every event over SSE).

Variants: ``spawn`` is a stdio function running ``/bin/true`` (every stdio invocation
spawns a process); ``noop`` is a warm ``interface: "lambda"`` instance (issue 14), run only
when the function spec accepts it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from typing import Any

import aiohttp
from bench_hodei import Completions, HodeiStack, completion_channel, invoke_async, keys_bytes
from bench_procs import Procs
from redis.asyncio import Redis

# bench/peers.py --hodei-job-slots / --hodei-clients set these before importing this module.
JOB_SLOTS = int(os.environ.get("BENCH_HODEI_JOB_SLOTS", "16"))
CLIENTS = int(os.environ.get("BENCH_HODEI_CLIENTS", "32"))
# "on" (the default, as shipped: each function under a uid, cgroup and namespaces of its
# own) or "off" (plain fork and exec, like the peers' subprocesses; root needs allow_root).
SANDBOX = os.environ.get("BENCH_HODEI_SANDBOX", "on")
CONFIG = (
    f"gateway + server + 1 agent ({JOB_SLOTS} job slots, process sandbox {SANDBOX}), "
    f"{CLIENTS} HTTP clients"
)
RESOURCES = {"cpu_millicores": 100, "memory_mb": 64}

SPAWN_SPEC: dict[str, Any] = {
    "runtime": "process",
    "command": ["/bin/true"],
    "resources": RESOURCES,
    "max_retries": 0,
}


def lambda_spec() -> dict[str, Any]:
    lib = os.path.dirname(os.path.abspath(__file__))
    return {
        "runtime": "process",
        "interface": "lambda",
        "handler": "peer_lambda.handler",
        "command": [sys.executable, "-m", "awslambdaric", "peer_lambda.handler"],
        "env": {"PYTHONPATH": lib, "LAMBDA_TASK_ROOT": lib},
        "warm": {"min": 4, "max": JOB_SLOTS, "idle_s": 300},
        "resources": RESOURCES,
        "max_retries": 0,
    }


class HodeiPeer:
    """One stack for a round; ``measure`` runs one variant on it."""

    def __init__(self, procs: Procs, redis_url: str) -> None:
        self.redis_url = redis_url
        self.stack = HodeiStack(procs, redis_url)
        self.noop_unavailable = ""

    async def start(self) -> dict[str, int]:
        stack = self.stack
        procs = {
            "server": stack.server().pid,
            "agent": stack.agent(
                "bench",
                job_slots=JOB_SLOTS,
                cpu_millicores=1_000_000,
                memory_mb=1_000_000,
                process_sandbox=SANDBOX,
                process_allow_root=SANDBOX == "off" and os.geteuid() == 0,
            ).pid,
            "gateway": stack.gateway().pid,
        }
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS))
        self.redis = Redis.from_url(self.redis_url)
        await stack.wait_ready(self.session)
        await stack.wait_workers(self.session, ["bench"])
        status, text = await stack.put_function(self.session, "bench-spawn", SPAWN_SPEC)
        if status not in (200, 201):
            raise RuntimeError(f"PUT bench-spawn: {status} {text}")
        self.noop_unavailable = await self._lambda_function()
        # Warm-up, as for every peer: scripts loaded, connections open, code paths imported.
        await self.run("spawn", 100, 30.0)
        if not self.noop_unavailable:
            await self.run("noop", 100, 30.0)
        return procs

    async def _lambda_function(self) -> str:
        """ "" when the lambda no-op function exists, else why it does not."""
        if importlib.util.find_spec("awslambdaric") is None:
            # Not even defined then: its pre-warmed instances could not start, and the
            # spawn rounds would measure the agent retrying them.
            return "awslambdaric is not installed"
        status, text = await self.stack.put_function(self.session, "bench-noop", lambda_spec())
        if status not in (200, 201):
            return f'the function spec refuses "interface": "lambda" ({status}: {text[:160]})'
        url = f"{self.stack.url}/v1/functions/bench-noop/invoke?wait=60"
        async with self.session.post(url, data=b"{}") as r:
            if r.status != 200:
                return f"a lambda invoke answered {r.status}: {(await r.text())[:160]}"
        return ""

    async def run(self, variant: str, n: int, quiet_s: float) -> tuple[float, int]:
        """Enqueue ``n`` invocations; returns (seconds from the first enqueue to the last
        completion, invocations refused)."""
        function = "bench-spawn" if variant == "spawn" else "bench-noop"
        channel = completion_channel(self.stack.prefix, self.redis_url)
        async with Completions(self.redis, channel) as done:
            started = time.perf_counter()
            refused = await invoke_async(
                self.session, self.stack.url, function, n, CLIENTS, done.accepted
            )
            if not await done.wait_all(n - len(refused), quiet_s):
                raise TimeoutError(
                    f"hodei/{variant}: {done.finished} of {n - len(refused)} finished, "
                    f"then nothing for {quiet_s:g}s"
                )
            if refused:
                print(f"# hodei/{variant}: {len(refused)} invocations refused: {refused[:5]}")
            return done.last_at - started, len(refused)

    async def close(self) -> None:
        await self.session.close()
        await self.redis.aclose()


async def bytes_per_queued_invocation(procs: Procs, redis_url: str, k: int) -> float:
    """Redis bytes one queued invocation costs: the gateway alone (nothing takes work), an
    empty payload, the sum of MEMORY USAGE over the database's keys before and after."""
    stack = HodeiStack(procs, redis_url)
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    gateway = stack.gateway()
    try:
        async with aiohttp.ClientSession() as session:
            await stack.wait_ready(session)
            status, text = await stack.put_function(session, "bench-spawn", SPAWN_SPEC)
            if status not in (200, 201):
                raise RuntimeError(f"PUT bench-spawn: {status} {text}")
            before = await keys_bytes(redis)
            refused = await invoke_async(
                session, stack.url, "bench-spawn", k, CLIENTS, lambda _id: None
            )
            if refused:
                raise RuntimeError(f"{len(refused)} invocations refused: {refused[:5]}")
            after = await keys_bytes(redis)
        return (after - before) / k
    finally:
        procs.stop(gateway)
        await redis.flushdb()
        await redis.aclose()
