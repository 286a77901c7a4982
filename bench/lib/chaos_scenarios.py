"""The fault scenarios of bench/chaos.py: each gets a fresh world (its own Redis, gateway,
servers), starts the agents it needs, injects its fault under a stream of invocations and
returns its figures (``World.verdict`` plus its own)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
from bench_hodei import HodeiStack
from bench_procs import Procs, rss_mb
from chaos_world import (
    TIMINGS,
    Ledger,
    RedisServer,
    audit,
    leader,
    post_invoke,
    probe,
    settle,
    started_on,
    statuses,
    stream,
)
from redis.asyncio import Redis

PREFIX = "hodei-chaos"
SLOTS = 4
RES = {"cpu_millicores": 100, "memory_mb": 64}


def sleeper(seconds: float, retries: int = 10) -> dict[str, Any]:
    return {
        "runtime": "process",
        "command": ["/bin/sleep", str(seconds)],
        "resources": RES,
        "max_retries": retries,
        "timeout_s": 60,
    }


FUNCTIONS = {
    "chaos-probe": {"runtime": "process", "command": ["/bin/true"], "resources": RES},
    "chaos-short": sleeper(0.3),
    "chaos-long": sleeper(1.5),
    "chaos-true": {"runtime": "process", "command": ["/bin/true"], "resources": RES},
}


@dataclass
class World:
    procs: Procs
    redis: RedisServer
    stack: HodeiStack
    session: aiohttp.ClientSession
    grace_s: float

    async def agent(self, worker_id: str, servers: list[str] | None = None) -> None:
        self.stack.agent(
            worker_id,
            servers or [],
            job_slots=SLOTS,
            cpu_millicores=1_000_000,
            memory_mb=1_000_000,
        )

    def proc(self, name: str) -> Any:
        return next(p for p in self.procs.started if p.name == name)

    async def verdict(self, ledger: Ledger, fault_over: float, recovery_s: float) -> dict[str, str]:
        # Seconds after the stream ended and the fault was over (the stream may go on after
        # the fault) until every acknowledged invocation was final.
        final, pending, settled = await settle(self.session, self.stack.url, ledger, self.grace_s)
        checked = await audit(self.redis.url, PREFIX)
        out = {
            "acked": str(len(ledger.acked)),
            "lost": str(len(pending)),
            "recorded_twice": str(len(checked.recorded_twice)),
            "attempts_backwards": str(len(checked.attempts_backwards)),
            "recovery_s": f"{recovery_s:.1f}" if recovery_s >= 0 else "never",
            "settle_s": f"{settled:.1f}" if not pending else f">{settled:.0f}",
            "final": " ".join(f"{k}:{v}" for k, v in sorted(final.items())),
            "not_acked": ledger.summary(),
            "attempts_ended_by": " ".join(f"{k}:{v}" for k, v in sorted(checked.retries.items()))
            or "none",
        }
        if pending:
            left = await statuses(self.session, self.stack.url, pending)
            counts: dict[str, int] = {}
            for status in left.values():
                counts[status] = counts.get(status, 0) + 1
            out["lost_by_status"] = " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))
            out["lost_sample"] = " ".join(pending[:3])
        if checked.recorded_twice:
            out["recorded_twice_sample"] = " ".join(checked.recorded_twice[:3])
        return out


async def agent_kill(world: World, args: argparse.Namespace) -> dict[str, str]:
    """Two agents; 20 times, kill -9 one of them (alternately) while it has work, and
    restart it, under a stream of `--stream` invocations."""
    await world.agent("a1")
    await world.agent("a2")
    await world.stack.wait_workers(world.session, ["a1", "a2"])
    ledger = Ledger()
    producer = asyncio.create_task(
        stream(world.session, world.stack.url, "chaos-short", args.stream, args.rate, ledger)
    )
    kills = 0
    deadline = time.monotonic() + 120
    while kills < args.kills and time.monotonic() < deadline:
        await asyncio.sleep(args.stream / args.rate / (args.kills + 2))
        victim = f"a{kills % 2 + 1}"
        world.procs.kill(world.proc(f"agent-{victim}"))
        world.procs.started.remove(world.proc(f"agent-{victim}"))
        kills += 1
        await world.agent(victim)
    fault_over = time.monotonic()
    recovery = await probe(world.session, world.stack.url, fault_over, 60)
    await producer
    out = await world.verdict(ledger, fault_over, recovery)
    return {"kills": str(kills), **out}


async def leader_kill(world: World, args: argparse.Namespace) -> dict[str, str]:
    """Two servers, an agent on each; kill -9 the leader mid-stream; the standby must take
    over (takeover_s: until the lock names it) and every acked invocation must finish."""
    await world.agent("a1", ["s1", "s2"])
    await world.agent("a2", ["s2", "s1"])
    await world.stack.wait_workers(world.session, ["a1", "a2"])
    ledger = Ledger()
    count = max(200, args.stream // 2)
    producer = asyncio.create_task(
        stream(world.session, world.stack.url, "chaos-short", count, args.rate, ledger)
    )
    await asyncio.sleep(count / args.rate / 3)
    holder = await leader(world.redis.url, PREFIX)
    if holder not in ("s1", "s2"):
        producer.cancel()
        return {"error": f"no leader found (lock holder {holder!r})"}
    world.procs.kill(world.proc(holder))
    killed_at = time.monotonic()
    takeover = -1.0
    while time.monotonic() - killed_at < 60:
        now_leader = await leader(world.redis.url, PREFIX)
        if now_leader and now_leader != holder:
            takeover = time.monotonic() - killed_at
            break
        await asyncio.sleep(0.05)
    recovery = await probe(world.session, world.stack.url, killed_at, 60)
    await producer
    out = await world.verdict(ledger, killed_at, recovery)
    return {"killed": holder, "takeover_s": f"{takeover:.1f}" if takeover >= 0 else "never", **out}


async def redis_restart(world: World, args: argparse.Namespace) -> dict[str, str]:
    """Two servers, an agent on each; kill -9 Redis mid-stream, restart it on the same AOF
    folder after `--outage-s`; everything must reconnect by itself."""
    await world.agent("a1", ["s1", "s2"])
    await world.agent("a2", ["s2", "s1"])
    await world.stack.wait_workers(world.session, ["a1", "a2"])
    ledger = Ledger()
    producer = asyncio.create_task(
        stream(world.session, world.stack.url, "chaos-short", args.stream, args.rate, ledger)
    )
    await asyncio.sleep(args.stream / args.rate / 3)
    acked_before = len(ledger.acked)
    world.redis.kill()
    await asyncio.sleep(args.outage_s)
    await world.redis.start()
    restarted = time.monotonic()
    recovery = await probe(world.session, world.stack.url, restarted, 60)
    await producer
    out = await world.verdict(ledger, restarted, recovery)
    subscribers = await _subscribers(world.redis.url)
    return {"acked_before_kill": str(acked_before), **out, "pubsub_numsub": subscribers}


async def _subscribers(redis_url: str) -> str:
    """PUBSUB NUMSUB of the completion channel and of each server's channel."""
    from hodei.plugin.data.keys import Keys

    # Servers take assignments from their inboxes (lists in Redis, nothing to subscribe
    # to); the gateway listens on the completion channel.
    keys = Keys.for_url(PREFIX, redis_url)
    channels = [keys.completed_channel]
    redis = Redis.from_url(redis_url)
    try:
        counts = await redis.pubsub_numsub(*channels)
        return " ".join(f"{c.decode()}:{n}" for c, n in counts)
    finally:
        await redis.aclose()


async def agent_freeze(world: World, args: argparse.Namespace) -> dict[str, str]:
    """One agent takes a batch, is frozen (SIGSTOP) past its lease while a second agent
    re-runs the work, then resumed (SIGCONT): its results are for stale attempts and must
    not be recorded."""
    await world.agent("a1")
    await world.stack.wait_workers(world.session, ["a1"])
    ledger = Ledger()
    for _ in range(2 * SLOTS):
        await post_invoke(world.session, world.stack.url, "chaos-long", ledger)
    frozen = world.proc("agent-a1")
    deadline = time.monotonic() + 30
    while not await started_on(world.redis.url, PREFIX, "a1"):
        if time.monotonic() > deadline:
            return {"error": "a1 started nothing within 30s"}
        await asyncio.sleep(0.05)
    os.kill(frozen.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    on_a1 = {i for i, _ in await started_on(world.redis.url, PREFIX, "a1")}
    await world.agent("a2")
    # Frozen until the lease ran out and a2 finished the batch (or 3 leases at most).
    while time.monotonic() - stopped_at < 3 * TIMINGS["lease_ttl_s"]:
        found = await statuses(world.session, world.stack.url, list(ledger.acked))
        if time.monotonic() - stopped_at > TIMINGS["lease_ttl_s"] and all(
            s in ("succeeded", "failed") for s in found.values()
        ):
            break
        await asyncio.sleep(0.5)
    frozen_s = time.monotonic() - stopped_at
    os.kill(frozen.pid, signal.SIGCONT)
    resumed = time.monotonic()
    probing = asyncio.create_task(probe(world.session, world.stack.url, resumed, 60))
    # Time for a1 to reconnect and report what it ran for the stale attempts.
    await asyncio.sleep(3 * TIMINGS["heartbeat_interval_s"] + 2)
    recovery = await probing
    out = await world.verdict(ledger, resumed, recovery)
    kept_by_a1 = 0
    for invocation_id in on_a1:
        async with world.session.get(f"{world.stack.url}/v1/invocations/{invocation_id}") as r:
            record = await r.json()
        if record.get("worker_id") == "a1" and record.get("attempt") == 1:
            kept_by_a1 += 1
    return {
        "frozen_s": f"{frozen_s:.1f}",
        "started_on_frozen": str(len(on_a1)),
        "stale_result_recorded": str(kept_by_a1),
        "violations": str(kept_by_a1),
        **out,
    }


async def gateway_kill(world: World, args: argparse.Namespace) -> dict[str, str]:
    """Synchronous calls with an Idempotency-Key in flight when the gateway is killed -9;
    re-asked through a restarted gateway with the same keys, each must return the
    original invocation (no second invocation per key)."""
    await world.agent("a1")
    await world.stack.wait_workers(world.session, ["a1"])
    keys = [f"chaos-{uuid.uuid4().hex}" for _ in range(args.sync_calls)]
    first = Ledger()
    calls = [asyncio.create_task(_keyed_call(world, key, first, 60)) for key in keys]
    deadline = time.monotonic() + 30
    while (await audit(world.redis.url, PREFIX)).queued < len(keys):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    gateway = world.proc("gateway")
    world.procs.kill(gateway)
    world.procs.started.remove(gateway)
    killed_at = time.monotonic()
    await asyncio.gather(*calls)
    world.stack.gateway()
    await world.stack.wait_ready(world.session)
    recovery = await probe(world.session, world.stack.url, killed_at, 60)
    originals = await _ids_of(world, "chaos-long")
    again = Ledger()
    replies = await asyncio.gather(*(_keyed_call(world, key, again, 90) for key in keys))
    out = await world.verdict(again, killed_at, recovery)
    answered = {i for status, i in replies if status == 200}
    not_original = {i for _, i in replies if i and i not in originals}
    return {
        "sync_in_flight": str(len(keys)),
        "recorded_before_kill": str(len(originals)),
        "answered_before_kill": str(len(first.acked)),
        "reasked_ok": str(len(answered)),
        "reasked_not_original": str(len(not_original)),
        "extra_invocations": str(len(await _ids_of(world, "chaos-long")) - len(keys)),
        "violations": str(len(keys) - len(answered & originals)),
        **out,
    }


async def _keyed_call(world: World, key: str, ledger: Ledger, timeout_s: float) -> tuple[int, str]:
    """A synchronous call of chaos-long with ``key`` as its Idempotency-Key."""
    return await post_invoke(
        world.session,
        world.stack.url,
        "chaos-long",
        ledger,
        asynchronous=False,
        headers={"Idempotency-Key": key},
        timeout_s=timeout_s,
    )


async def _ids_of(world: World, function: str) -> set[str]:
    url = f"{world.stack.url}/v1/invocations?function={function}&limit=1000"
    async with world.session.get(url) as r:
        return {i["id"] for i in (await r.json())["invocations"]}


async def soak(world: World, args: argparse.Namespace) -> dict[str, str]:
    """A steady rate for `--soak-s`: RSS of each process and Redis memory, start and end."""
    await world.agent("a1")
    await world.agent("a2")
    await world.stack.wait_workers(world.session, ["a1", "a2"])
    ledger = Ledger()
    count = int(args.soak_s * args.soak_rate)
    producer = asyncio.create_task(
        stream(world.session, world.stack.url, "chaos-true", count, args.soak_rate, ledger)
    )
    await asyncio.sleep(min(10.0, args.soak_s / 10))
    start = await _memory(world)
    await producer
    end = await _memory(world)
    out = await world.verdict(ledger, time.monotonic(), 0.0)
    memory = {
        (name if name.startswith("redis") else f"rss_mb[{name}]"): (
            f"{start.get(name, 0):.1f}->{end.get(name, 0):.1f}"
        )
        for name in end
    }
    return {"rate": f"{args.soak_rate:g}/s", "duration_s": f"{args.soak_s:g}", **memory, **out}


async def _memory(world: World) -> dict[str, float]:
    found = {p.name: rss_mb(p.pid) for p in world.procs.started if not p.name.startswith("redis")}
    redis = Redis.from_url(world.redis.url)
    try:
        found["redis_used_memory_mb"] = int((await redis.info("memory"))["used_memory"]) / 2**20
    finally:
        await redis.aclose()
    return found
