"""A Hodei stack for the benchmarks: gateway, servers and agents as separate processes
(``python -m hodei.cli …``), configured through ``HODEI_*`` variables (which any version
reads: an unknown one is ignored, where an unknown flag would be an error), and a client
that enqueues over HTTP and learns completions from the Redis completion channel.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from bench_procs import Proc, Procs, clean_env, free_port
from redis.asyncio import Redis

# Enough for every event of a benchmark or chaos run: `finished` events are counted.
EVENTS_MAXLEN = 5_000_000
MAX_QUEUE = 1_000_000


def _keys() -> Any:
    """The keys module of the Hodei being run (it moved into the data layer)."""
    try:
        from hodei.plugin.data import keys
    except ImportError:
        from hodei.plugin import keys  # type: ignore[no-redef]
    return keys


def completion_channel(prefix: str, redis_url: str) -> str:
    """The channel the servers publish finished invocation ids on, as the Hodei being run
    names it (the name changed once: it carries the database number since c5a924c)."""
    keys = _keys()
    if hasattr(keys.Keys, "for_url"):
        return str(keys.Keys.for_url(prefix, redis_url).completed_channel)
    return str(keys.Keys(prefix).completed_channel)


def events_key(prefix: str) -> str:
    return str(_keys().Keys(prefix).events)


@dataclass
class HodeiStack:
    procs: Procs
    redis_url: str
    prefix: str = "hodei-bench"
    log_level: str = "warning"
    state_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="hodei-bench-"))
    extra_env: dict[str, str] = field(default_factory=dict)
    gateway_port: int = 0
    server_ports: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def _env(self, **values: Any) -> dict[str, str]:
        env = clean_env(
            HODEI_REDIS_URL=self.redis_url,
            HODEI_KEY_PREFIX=self.prefix,
            HODEI_LOG_LEVEL=self.log_level,
            HODEI_METRICS_PORT="-1",
        )
        env.pop("CONSUL_HTTP_ADDR", None)
        env.update(self.extra_env)
        env.update({f"HODEI_{k.upper()}": str(v) for k, v in values.items()})
        return env

    def server(self, name: str = "server", **settings: Any) -> Proc:
        port = self.server_ports.get(name) or free_port()
        self.server_ports[name] = port
        env = self._env(
            grpc_port=port,
            max_queue=MAX_QUEUE,
            events_maxlen=EVENTS_MAXLEN,
            server_id=name,
            **settings,
        )
        return self.procs.hodei(name, "server", env=env)

    def agent(
        self,
        worker_id: str = "bench",
        servers: Iterable[str] = (),
        runtimes: str = "process",
        **settings: Any,
    ) -> Proc:
        names = list(servers) or list(self.server_ports)
        address = ",".join(f"127.0.0.1:{self.server_ports[n]}" for n in names)
        env = self._env(
            server=address,
            worker_id=worker_id,
            health_port=-1,
            state_dir=self.state_dir,
            runtimes=runtimes,
            **settings,
        )
        return self.procs.hodei(f"agent-{worker_id}", "agent", env=env)

    def gateway(self, name: str = "gateway", **settings: Any) -> Proc:
        self.gateway_port = self.gateway_port or free_port()
        env = self._env(
            port=self.gateway_port,
            max_queue=MAX_QUEUE,
            events_maxlen=EVENTS_MAXLEN,
            **settings,
        )
        return self.procs.hodei(name, "gateway", env=env)

    def start(self, worker_id: str, **agent_settings: Any) -> None:
        """One server, one agent (``worker_id``) and the gateway."""
        self.server()
        self.agent(worker_id, **agent_settings)
        self.gateway()

    async def wait_ready(self, session: aiohttp.ClientSession, within_s: float = 60.0) -> None:
        await wait_until(lambda: _status(session, f"{self.url}/readyz", 200), within_s, "gateway")

    async def workers(self, session: aiohttp.ClientSession) -> list[dict[str, Any]]:
        async with session.get(f"{self.url}/v1/workers") as r:
            if r.status != 200:
                return []
            found: list[dict[str, Any]] = (await r.json())["workers"]
            return found

    async def wait_workers(
        self, session: aiohttp.ClientSession, ids: Iterable[str], within_s: float = 60.0
    ) -> None:
        wanted = set(ids)

        async def ready() -> bool:
            try:
                states = {w["id"]: w["state"] for w in await self.workers(session)}
            except (aiohttp.ClientError, OSError):
                return False
            return all(states.get(i) in ("available", "running") for i in wanted)

        await wait_until(ready, within_s, f"workers {sorted(wanted)}")

    async def wait_runtime(
        self, session: aiohttp.ClientSession, runtime: str, within_s: float = 60.0
    ) -> None:
        """Until a worker offers ``runtime`` (a docker agent offers it once its engine
        answers)."""

        async def ready() -> bool:
            try:
                return any(runtime in w.get("runtimes", []) for w in await self.workers(session))
            except (aiohttp.ClientError, OSError):
                return False

        await wait_until(ready, within_s, f"a worker with the {runtime} runtime")

    async def put_function(
        self, session: aiohttp.ClientSession, name: str, spec: dict[str, Any]
    ) -> tuple[int, str]:
        async with session.put(f"{self.url}/v1/functions/{name}", json=spec) as r:
            return r.status, await r.text()


async def _status(session: aiohttp.ClientSession, url: str, status: int) -> bool:
    try:
        async with session.get(url) as r:
            return r.status == status
    except (aiohttp.ClientError, OSError):
        return False


async def wait_until(check: Any, within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{what} not ready within {within_s:g}s")


class Completions:
    """Finished invocation ids heard on the completion channel. A notice can come before
    the 202 that names the id is read, so both orders are matched."""

    def __init__(self, redis: Redis, channel: str) -> None:
        self.pubsub = redis.pubsub()
        self.channel = channel
        self.pending: set[str] = set()
        self.early: set[str] = set()
        self.finished = 0
        self.last_at = 0.0
        self.changed = asyncio.Event()

    async def __aenter__(self) -> Completions:
        await self.pubsub.subscribe(self.channel)
        self.task = asyncio.create_task(self._listen())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.pubsub.aclose()

    async def _listen(self) -> None:
        async for message in self.pubsub.listen():
            if message["type"] != "message":
                continue
            for invocation_id in message["data"].decode().replace(",", " ").split():
                if invocation_id in self.pending:
                    self.pending.discard(invocation_id)
                    self._done()
                else:
                    self.early.add(invocation_id)

    def accepted(self, invocation_id: str) -> None:
        if invocation_id in self.early:
            self.early.discard(invocation_id)
            self._done()
        else:
            self.pending.add(invocation_id)

    def _done(self) -> None:
        self.finished += 1
        self.last_at = time.perf_counter()
        self.changed.set()

    async def wait_all(self, total: int, quiet_s: float) -> bool:
        """Until ``total`` accepted ids finished; False when nothing finished for
        ``quiet_s``."""
        while self.finished < total:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), quiet_s)
            except TimeoutError:
                return False
        return True


async def invoke_async(
    session: aiohttp.ClientSession,
    url: str,
    function: str,
    total: int,
    clients: int,
    on_accepted: Any,
    payload: bytes = b"",
) -> list[int]:
    """``total`` async invokes from ``clients`` concurrent keep-alive clients; returns the
    statuses that were not 202."""
    remaining = total
    refused: list[int] = []
    target = f"{url}/v1/functions/{function}/invoke?async=true"

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            async with session.post(target, data=payload) as r:
                body = await r.read()
                if r.status == 202:
                    on_accepted(json.loads(body)["id"])
                else:
                    refused.append(r.status)

    await asyncio.gather(*(client() for _ in range(clients)))
    return refused


async def redis_cpu_s(redis: Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def keys_bytes(redis: Redis) -> int:
    """The sum of ``MEMORY USAGE`` (exact: SAMPLES 0) of every key in the database."""
    total = 0
    async for key in redis.scan_iter(count=1000):
        total += int(await redis.memory_usage(key, samples=0) or 0)
    return total


def lib_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))
