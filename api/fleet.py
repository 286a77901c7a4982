"""The fleet and the system: workers, drain, queue, events, health, readiness, metrics."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hodei.api.sse import EventStream
from hodei.api.state import error, gateway
from hodei.errors import Conflict, NotFound
from hodei.plugin.registry import WorkerState
from hodei.plugin.store import now_ms
from hodei.readiness import READINESS


def worker_view(h: dict[str, str], jobs: list[str] | None = None) -> dict[str, Any]:
    def num(key: str) -> int:
        return int(h.get(key) or 0)

    capacity = {
        "cpu_millicores": num("cpu_total"),
        "memory_mb": num("mem_total"),
        "gpus": num("gpu_total"),
        "job_slots": num("slots_total"),
    }
    allocated = {
        "cpu_millicores": num("cpu_used"),
        "memory_mb": num("mem_used"),
        "gpus": num("gpu_used"),
        "job_slots": num("slots_used"),
    }
    view: dict[str, Any] = {
        "id": h["id"],
        "state": h.get("state"),
        "hostname": h.get("hostname"),
        "version": h.get("version"),
        "server_id": h.get("server_id"),
        "labels": json.loads(h.get("labels") or "{}"),
        "runtimes": [r for r in (h.get("runtimes") or "").split(",") if r],
        "capacity": capacity,
        "allocated": allocated,
        "utilisation": {
            k: round(allocated[k] / capacity[k], 3) if capacity[k] else 0.0
            for k in ("cpu_millicores", "memory_mb", "job_slots")
        },
        "cpu_usage_percent": float(h.get("cpu_percent") or 0),
        "memory_usage_percent": float(h.get("mem_percent") or 0),
        "last_heartbeat": int(h.get("last_heartbeat") or 0) / 1000,
    }
    if jobs is not None:
        view["jobs"] = jobs
    return view


async def list_workers(request: web.Request) -> web.Response:
    """GET /v1/workers"""
    workers = await gateway(request).registry.all()
    return web.json_response({"workers": [worker_view(h) for h in workers]})


async def _worker(request: web.Request) -> tuple[str, dict[str, str]]:
    worker_id = request.match_info["id"]
    h = await gateway(request).registry.get(worker_id)
    if h is None:
        raise NotFound(f"worker {worker_id!r} does not exist")
    return worker_id, h


async def get_worker(request: web.Request) -> web.Response:
    """GET /v1/workers/{id}"""
    worker_id, h = await _worker(request)
    return web.json_response(worker_view(h, await gateway(request).registry.jobs_of(worker_id)))


async def drain_worker(request: web.Request) -> web.Response:
    """POST /v1/workers/{id}/drain: no new work; running work finishes."""
    registry = gateway(request).registry
    worker_id, h = await _worker(request)
    already = h.get("state") == WorkerState.DRAINING
    if not already and await registry.transition(worker_id, WorkerState.DRAINING) is None:
        raise Conflict(f"worker {worker_id} is {h.get('state')} and cannot drain")
    return web.json_response(worker_view(await registry.get(worker_id) or h), status=202)


async def queue(request: web.Request) -> web.Response:
    """GET /v1/queue: depth per priority, oldest age, pending reasons."""
    gw = gateway(request)
    depth = await gw.store.queue_depth()
    snapshot = gw.redis.pipeline(transaction=True)
    snapshot.zrange(gw.keys.queue, 0, 99)
    snapshot.zrange(gw.keys.parked, 0, 99)
    head = [i for part in await snapshot.execute() for i in part]
    pipe = gw.redis.pipeline(transaction=False)
    for i in head:
        pipe.hmget(
            gw.keys.invocation(i.decode()), "function", "priority", "created_at", "pending_reason"
        )
    now = now_ms()
    pending, oldest = [], 0
    for i, (function, priority, created, reason) in zip(head, await pipe.execute(), strict=True):
        if created:
            oldest = max(oldest, now - int(created))
        if reason:
            pending.append(
                {
                    "id": i.decode(),
                    "function": (function or b"").decode(),
                    "priority": (priority or b"").decode(),
                    "pending_reason": reason.decode(),
                }
            )
    retrying = depth.pop("retrying")
    return web.json_response(
        {"depth": depth, "retrying": retrying, "oldest_age_s": oldest / 1000, "pending": pending}
    )


async def events(request: web.Request) -> web.StreamResponse:
    """GET /v1/events?invocation=&worker=: the domain events as server-sent events."""
    gw = gateway(request)
    stream = EventStream(gw.redis, gw.keys)
    since = request.headers.get("Last-Event-ID") or request.query.get("since") or "$"
    response = await stream.open(request)
    async for event in stream.follow(
        invocation=request.query.get("invocation", ""),
        worker=request.query.get("worker", ""),
        since=since,
    ):
        if event is None:
            await response.write(b": keepalive\n\n")
        else:
            await stream.send(response, event.get("type", "event"), event, event["id"])
    return response


async def console(request: web.Request) -> web.Response:
    """GET /ui: the web console (workers and their utilisation, queue, recent invocations),
    a page that reads the /v1 API from the browser."""
    page = (resources.files("hodei.api") / "console.html").read_text()
    return web.Response(text=page, content_type="text/html")


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is alive."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: ready while Redis (and Consul, when configured) answer."""
    problems = await request.app[READINESS].check()
    if problems:
        return error(503, problems[0].code, problems[0].message)
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format."""
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})
