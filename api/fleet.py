"""The fleet and the system: workers, drain, queue, events, health, readiness, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hodei.api.requests import CALLER, SCOPES
from hodei.api.state import error, gateway
from hodei.api.streams import EventStream
from hodei.domain import WorkerState, now_ms
from hodei.errors import Conflict, NotFound, StreamLagging
from hodei.plugin.data.records import WorkerRecord
from hodei.readiness import READINESS

log = logging.getLogger(__name__)
EVENT_ID_RE = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")


def worker_view(w: WorkerRecord, jobs: list[str] | None = None) -> dict[str, Any]:
    capacity = {
        "cpu_millicores": w.capacity.cpu,
        "memory_mb": w.capacity.mem,
        "gpus": w.capacity.gpu,
        "job_slots": w.capacity.slots,
    }
    allocated = {
        "cpu_millicores": w.used.cpu,
        "memory_mb": w.used.mem,
        "gpus": w.used.gpu,
        "job_slots": w.used.slots,
    }
    view: dict[str, Any] = {
        "id": w.id,
        "state": str(w.state),
        "hostname": w.hostname,
        "version": w.version,
        "server_id": w.server_id,
        "labels": w.labels,
        "runtimes": sorted(w.runtimes),
        "capacity": capacity,
        "allocated": allocated,
        "utilisation": {
            k: round(allocated[k] / capacity[k], 3) if capacity[k] else 0.0
            for k in ("cpu_millicores", "memory_mb", "job_slots")
        },
        "cpu_usage_percent": w.cpu_percent,
        "memory_usage_percent": w.mem_percent,
        "last_heartbeat": w.last_heartbeat_ms / 1000,
        "instances": [
            {
                "function": p.function,
                "revision": p.revision,
                "idle": p.idle,
                "busy": p.busy,
                "starting": p.starting,
            }
            for p in w.pools
        ],
    }
    if jobs is not None:
        view["jobs"] = jobs
    return view


async def list_workers(request: web.Request) -> web.Response:
    """GET /v1/workers"""
    workers = await gateway(request).data.workers.all()
    return web.json_response({"workers": [worker_view(w) for w in workers]})


async def _worker(request: web.Request) -> WorkerRecord:
    worker_id = request.match_info["id"]
    found = await gateway(request).data.workers.get(worker_id)
    if found is None:
        raise NotFound(f"worker {worker_id[:64]!r} does not exist")
    return found


async def get_worker(request: web.Request) -> web.Response:
    """GET /v1/workers/{id}"""
    w = await _worker(request)
    return web.json_response(worker_view(w, await gateway(request).data.workers.jobs_of(w.id)))


async def drain_worker(request: web.Request) -> web.Response:
    """POST /v1/workers/{id}/drain: no new work; running work finishes."""
    workers = gateway(request).data.workers
    w = await _worker(request)
    already = w.state is WorkerState.DRAINING
    if not already and await workers.transition(w.id, WorkerState.DRAINING) is None:
        raise Conflict(f"worker {w.id} is {w.state} and cannot drain")
    return web.json_response(worker_view(await workers.get(w.id) or w), status=202)


async def queue(request: web.Request) -> web.Response:
    """GET /v1/queue: depth per priority, oldest age, pending reasons."""
    data = gateway(request).data
    depth = await data.queue.depth()
    pending, oldest = await data.queue.pending()
    return web.json_response(
        {
            "depth": depth.per_priority,
            "retrying": depth.retrying,
            "payload_bytes": depth.payload_bytes,
            "oldest_age_s": max(0, now_ms() - oldest) / 1000 if oldest else 0.0,
            "pending": [
                {
                    "id": p.id,
                    "function": p.function,
                    "priority": p.priority,
                    "pending_reason": p.pending_reason,
                    "parked": p.parked,
                }
                for p in pending
            ],
        }
    )


def _event_id(text: str) -> bool:
    """A stream entry id Redis takes: ASCII digits, each part below 2**64 (int() alone
    reads "1_000", other scripts' digits and any length)."""
    match = EVENT_ID_RE.fullmatch(text)
    return match is not None and all(int(part or 0) < 2**64 for part in match.groups())


async def events(request: web.Request) -> web.StreamResponse:
    """GET /v1/events?invocation=&worker=&since=: the domain events as server-sent events."""
    gw = gateway(request)
    since = request.headers.get("Last-Event-ID") or request.query.get("since") or ""
    if since and not _event_id(since):
        raise web.HTTPBadRequest(reason="since must be an event id")
    subscriber = await gw.hub.subscribe(
        request[CALLER],
        invocation=request.query.get("invocation", ""),
        worker=request.query.get("worker", ""),
    )
    stream: EventStream | None = None
    try:
        stream = await EventStream.open(request, subscriber)
        if since:
            # What happened since: read from Redis once; the live feed (subscribed before
            # this read, so nothing falls between) takes over after it.
            stream.last = since
            for entry in await gw.data.events.events(since, None, count=10_000):
                if stream.fresh(entry) and subscriber.wants(entry):
                    await stream.send_entry(entry)
        while not stream.closed:
            live = await stream.next()
            if live is None:
                await stream.keepalive()
            else:
                await stream.send_entry(live)
        return stream.response
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception as exc:
        if stream is None:
            raise
        code = "too_slow" if isinstance(exc, StreamLagging) else "unavailable"
        with contextlib.suppress(ConnectionResetError):
            await stream.send("error", {"code": code, "message": str(exc) or type(exc).__name__})
        return stream.response
    finally:
        gw.hub.unsubscribe(subscriber)


async def whoami(request: web.Request) -> web.Response:
    """GET /v1/whoami: what the caller's token may do (the console asks before it offers
    actions)."""
    scopes: frozenset[str] = request[SCOPES]
    return web.json_response({"scopes": sorted(scopes), "auth": gateway(request).tokens.enabled})


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
