"""What bench/chaos.py's scenarios share: a private ``redis-server`` (AOF, appendfsync
always, its own temp folder and free port), a Hodei stack tuned for quick fault detection,
a steady stream of async invocations that records what the gateway acknowledged, and the
audit: which acknowledged invocations never became final, and which had their result
recorded twice (``finished`` events per invocation on the event stream, whose maxlen the
stack raises so nothing is trimmed) or saw their attempt number go backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from bench_hodei import HodeiStack, events_key
from bench_procs import Proc, Procs, free_port
from redis.asyncio import Redis

FINAL = {"succeeded", "failed", "timed_out", "cancelled"}

# Fault detection in seconds rather than tens of seconds, so that every scenario is short.
TIMINGS = {
    "heartbeat_interval_s": 1,
    "missed_heartbeats": 3,
    "lease_ttl_s": 6,
    "leader_ttl_s": 3,
    "retry_base_s": 0.2,
    "retry_cap_s": 2,
}


class RedisServer:
    """A private redis-server with AOF fsynced on every write, restartable on its folder."""

    def __init__(self, procs: Procs, folder: str) -> None:
        if shutil.which("redis-server") is None:
            raise SystemExit("chaos: redis-server is not on PATH (apt-get install redis-server)")
        self.procs = procs
        self.folder = folder
        self.port = free_port()
        self.proc: Proc | None = None
        os.makedirs(folder, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        argv = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", self.folder, "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--protected-mode", "no", "--daemonize", "no",
        ]  # fmt: skip
        self.proc = self.procs.start(f"redis-{len(self.procs.started)}", argv)
        client = Redis.from_url(self.url)
        try:
            for _ in range(200):
                with contextlib.suppress(Exception):
                    if await client.ping():
                        return
                await asyncio.sleep(0.05)
            raise TimeoutError("redis-server did not start")
        finally:
            await client.aclose()

    def kill(self) -> None:
        assert self.proc is not None
        self.procs.kill(self.proc)
        self.procs.started.remove(self.proc)


@dataclass
class Ledger:
    """What the gateway answered: acknowledged ids (200/202) and everything else."""

    acked: dict[str, float] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        return " ".join(f"{k}:{v}" for k, v in sorted(self.refused.items())) or "none"


async def post_invoke(
    session: aiohttp.ClientSession,
    url: str,
    function: str,
    ledger: Ledger,
    *,
    asynchronous: bool = True,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> tuple[int, str]:
    """One invoke; records an acknowledged id in ``ledger``. Returns (status, id)."""
    query = "?async=true" if asynchronous else "?wait=60"
    try:
        async with session.post(
            f"{url}/v1/functions/{function}/invoke{query}",
            data=b"",
            headers=headers or {},
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as r:
            await r.read()
            invocation_id = r.headers.get("X-Hodei-Invocation-Id", "")
            if r.status in (200, 202) and invocation_id:
                ledger.acked.setdefault(invocation_id, time.monotonic())
            else:
                ledger.refused[str(r.status)] += 1
            return r.status, invocation_id
    except (aiohttp.ClientError, OSError) as exc:
        ledger.refused[type(exc).__name__] += 1
    except TimeoutError:
        ledger.refused["timeout"] += 1
    return 0, ""


async def stream(
    session: aiohttp.ClientSession,
    url: str,
    function: str,
    count: int,
    rate: float,
    ledger: Ledger,
) -> None:
    """``count`` async invokes at ``rate`` per second, each on its own (a stalled gateway
    does not slow the stream down; at most 256 wait at once)."""
    limit = asyncio.Semaphore(256)
    started = time.monotonic()

    async def one() -> None:
        async with limit:
            await post_invoke(session, url, function, ledger)

    tasks = []
    for i in range(count):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)


async def statuses(
    session: aiohttp.ClientSession, url: str, ids: list[str], clients: int = 8
) -> dict[str, str]:
    """The record's status of each id ("?" when it cannot be read)."""
    found: dict[str, str] = {}
    queue = list(ids)

    async def client() -> None:
        while queue:
            invocation_id = queue.pop()
            try:
                async with session.get(f"{url}/v1/invocations/{invocation_id}") as r:
                    found[invocation_id] = (await r.json())["status"] if r.status == 200 else "?"
            except (aiohttp.ClientError, OSError, KeyError, ValueError):
                found[invocation_id] = "?"

    await asyncio.gather(*(client() for _ in range(clients)))
    return found


async def settle(
    session: aiohttp.ClientSession, url: str, ledger: Ledger, grace_s: float
) -> tuple[Counter[str], list[str], float]:
    """Waits up to ``grace_s`` for every acknowledged invocation to be final. Returns the
    final statuses, the ids left non-final, and the seconds it took."""
    started = time.monotonic()
    pending = list(ledger.acked)
    final: Counter[str] = Counter()
    while True:
        found = await statuses(session, url, pending)
        pending = [i for i in pending if found.get(i) not in FINAL]
        final.update(s for i, s in found.items() if s in FINAL)
        if not pending or time.monotonic() - started > grace_s:
            return final, pending, time.monotonic() - started
        await asyncio.sleep(1.0)


@dataclass
class Audit:
    recorded_twice: list[str]
    attempts_backwards: list[str]
    queued: int
    retries: Counter[str]


async def audit(redis_url: str, prefix: str) -> Audit:
    """Reads the whole event stream: `finished` events per invocation, attempt order."""
    redis = Redis.from_url(redis_url)
    finished: Counter[str] = Counter()
    last_attempt: dict[str, int] = {}
    backwards: set[str] = set()
    queued = 0
    retries: Counter[str] = Counter()
    cursor = "-"
    key = events_key(prefix)
    try:
        while True:
            entries = await redis.xrange(key, min=cursor, count=5000)
            if not entries:
                break
            for _entry_id, raw in entries:
                fields = {k.decode(): v.decode() for k, v in raw.items()}
                invocation = fields.get("invocation", "")
                if not invocation:
                    continue
                if fields.get("type") == "queued":
                    queued += 1
                if fields.get("type") == "finished":
                    finished[invocation] += 1
                if fields.get("type") in ("retry", "requeued"):
                    retries[fields.get("outcome") or fields["type"]] += 1
                if fields.get("attempt", "").isdigit():
                    attempt = int(fields["attempt"])
                    if attempt < last_attempt.get(invocation, 0):
                        backwards.add(invocation)
                    last_attempt[invocation] = max(attempt, last_attempt.get(invocation, 0))
            cursor = "(" + entries[-1][0].decode()
    finally:
        await redis.aclose()
    twice = sorted(i for i, n in finished.items() if n > 1)
    return Audit(twice, sorted(backwards), queued, retries)


async def started_on(redis_url: str, prefix: str, worker: str) -> list[tuple[str, int]]:
    """(invocation, attempt) of the `started` events of ``worker`` so far."""
    redis = Redis.from_url(redis_url)
    try:
        entries = await redis.xrange(events_key(prefix), count=100_000)
    finally:
        await redis.aclose()
    found = []
    for _id, raw in entries:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        if fields.get("type") == "started" and fields.get("worker") == worker:
            found.append((fields["invocation"], int(fields.get("attempt") or 0)))
    return found


async def probe(session: aiohttp.ClientSession, url: str, since: float, within_s: float) -> float:
    """Seconds from ``since`` until a fresh synchronous invoke of `chaos-probe` succeeds
    (fresh work runs again), -1 when none did within ``within_s``."""
    ledger = Ledger()
    while time.monotonic() - since < within_s:
        status, _ = await post_invoke(
            session, url, "chaos-probe", ledger, asynchronous=False, timeout_s=5
        )
        if status == 200:
            return time.monotonic() - since
        await asyncio.sleep(0.2)
    return -1.0


async def leader(redis_url: str, prefix: str) -> str:
    """The server id holding the Redis leader lock ("" when none or unreadable). The lock
    names a server process: its id, "#" and a suffix of that process's own."""
    from hodei.plugin.data.keys import Keys

    redis = Redis.from_url(redis_url)
    try:
        value = await redis.get(Keys(prefix).leader)
    except Exception:
        return ""
    finally:
        await redis.aclose()
    return value.decode().rsplit(":", 1)[0].split("#", 1)[0] if value else ""


def new_stack(procs: Procs, redis: RedisServer, prefix: str, state_dir: str) -> HodeiStack:
    timings = {f"HODEI_{k.upper()}": str(v) for k, v in TIMINGS.items()}
    return HodeiStack(
        procs, redis.url, prefix=prefix, log_level="info", state_dir=state_dir, extra_env=timings
    )


async def put_functions(
    stack: HodeiStack, session: aiohttp.ClientSession, specs: dict[str, dict[str, Any]]
) -> None:
    for name, spec in specs.items():
        status, text = await stack.put_function(session, name, spec)
        if status not in (200, 201):
            raise RuntimeError(f"PUT {name}: {status} {text}")
