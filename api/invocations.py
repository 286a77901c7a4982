"""Invoking functions and reading invocations: invoke, one-off jobs, record, result, logs,
cancel, list."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
import uuid

from aiohttp import web

from hodei import tracing
from hodei.api import metrics
from hodei.api.sse import EventStream
from hodei.api.state import Gateway, error, gateway
from hodei.errors import NotFound, QueueFull
from hodei.logs import inv
from hodei.plugin.models import NAME_RE, FunctionSpec, Invocation, Priority, Status
from hodei.plugin.sessions import route_cancel

log = logging.getLogger(__name__)


def _headers(inv: Invocation) -> dict[str, str]:
    headers = {"X-Hodei-Invocation-Id": inv.id, "X-Hodei-Status": str(inv.status)}
    if inv.exit_code is not None:
        headers["X-Hodei-Exit-Code"] = str(inv.exit_code)
    if inv.duration_ms is not None:
        headers["X-Hodei-Duration-Ms"] = str(inv.duration_ms)
    if inv.worker_id:
        headers["X-Hodei-Worker"] = inv.worker_id
    return headers


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


def _priority(request: web.Request) -> Priority | None:
    raw = request.headers.get("X-Hodei-Priority")
    if raw is None:
        return None
    try:
        return Priority(raw.lower())
    except ValueError:
        raise web.HTTPBadRequest(reason="X-Hodei-Priority must be high, normal or low") from None


def _wait(request: web.Request, gw: Gateway) -> float:
    raw = request.query.get("wait")
    if raw is None:
        return gw.settings.default_wait_s
    try:
        wait = float(raw.rstrip("s"))
    except ValueError:
        raise web.HTTPBadRequest(reason="wait must be a number of seconds") from None
    if wait < 0:
        raise web.HTTPBadRequest(reason="wait must be >= 0")
    return min(wait, gw.settings.max_wait_s)


def _callback(request: web.Request) -> str:
    url = request.headers.get("X-Callback-Url", "")
    if url and not re.match(r"^https?://[^\s/]+", url):
        raise web.HTTPBadRequest(reason="X-Callback-Url must be an http(s) URL")
    return url


def _traceparent(request: web.Request) -> str:
    value = request.headers.get("traceparent", "").strip().lower()
    return value if tracing.valid(value) else ""


async def invoke(request: web.Request) -> web.StreamResponse:
    """POST /v1/functions/{name}/invoke"""
    gw = gateway(request)
    started = time.perf_counter()
    spec = await gw.store.get_function(request.match_info["name"])
    asynchronous = _flag(request, "async") or "respond-async" in request.headers.get("Prefer", "")
    wait = _wait(request, gw)
    payload = await request.read()
    invocation_id = uuid.uuid4().hex
    waiter = None if asynchronous else gw.completions.expect(invocation_id)
    try:
        recorded_id = await _enqueue(
            gw, request, spec, payload, "async" if asynchronous else "sync", invocation_id
        )
        if asynchronous or waiter is None:
            if recorded_id == invocation_id:  # just recorded: no need to read it back
                return _accepted_new(invocation_id)
            return await _accepted(gw, recorded_id, 202)
        if recorded_id != invocation_id:  # an earlier invocation with this idempotency key
            gw.completions.forget(invocation_id, waiter)
            invocation_id = recorded_id
            waiter = gw.completions.expect(invocation_id)
        return await _wait_for_result(gw, invocation_id, waiter, wait)
    finally:
        if waiter is not None:
            gw.completions.forget(invocation_id, waiter)
        metrics.INVOKE_LATENCY.labels("async" if asynchronous else "sync").observe(
            time.perf_counter() - started
        )


async def _enqueue(
    gw: Gateway,
    request: web.Request,
    spec: FunctionSpec,
    payload: bytes,
    mode: str,
    invocation_id: str | None = None,
) -> str:
    """Record and enqueue one invocation under its submit span; returns the recorded id
    (an earlier invocation's when the idempotency key was seen)."""
    attributes = {"hodei.function": spec.name}
    if invocation_id:
        attributes["hodei.invocation_id"] = invocation_id
    traceparent, end_submit = tracing.start("submit", _traceparent(request), attributes)
    try:
        recorded_id = await gw.store.invoke(
            spec,
            payload,
            priority=_priority(request),
            traceparent=traceparent,
            invocation_id=invocation_id,
            callback_url=_callback(request),
            idempotency_key=request.headers.get("Idempotency-Key", ""),
        )
    except QueueFull:
        metrics.REJECTED.labels("backpressure").inc()
        end_submit("queue full")
        raise
    except Exception as exc:
        end_submit(type(exc).__name__)
        raise
    end_submit()
    metrics.INVOCATIONS.labels(spec.name, "accepted").inc()
    log.info(
        "invocation %s of %s accepted (%s, trace %s)",
        recorded_id,
        spec.name,
        mode,
        tracing.trace_id(traceparent),
        extra=inv(recorded_id, function=spec.name),
    )
    return recorded_id


def _accepted_new(invocation_id: str) -> web.Response:
    return web.json_response(
        {"id": invocation_id, "status": "queued"},
        status=202,
        headers={
            "X-Hodei-Invocation-Id": invocation_id,
            "X-Hodei-Status": "queued",
            "Location": f"/v1/invocations/{invocation_id}",
        },
    )


async def _accepted(gw: Gateway, invocation_id: str, status: int) -> web.Response:
    inv = await gw.store.get(invocation_id)
    return web.json_response(
        {"id": inv.id, "status": str(inv.status)},
        status=status,
        headers={**_headers(inv), "Location": f"/v1/invocations/{inv.id}"},
    )


async def _wait_for_result(
    gw: Gateway, invocation_id: str, waiter: asyncio.Future[None], wait: float
) -> web.Response:
    deadline = asyncio.get_running_loop().time() + wait
    while True:
        inv = await gw.store.get(invocation_id)
        if inv.status.final:
            return await _final_response(gw, inv)
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            response = error(
                504,
                "wait_timeout",
                f"the invocation did not finish within {wait:g}s; "
                f"fetch it later at /v1/invocations/{inv.id}",
                id=inv.id,
                status=str(inv.status),
            )
            response.headers.update({**_headers(inv), "Location": f"/v1/invocations/{inv.id}"})
            return response
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter), left)
        if waiter.done():
            waiter = gw.completions.expect(invocation_id)


async def _final_response(gw: Gateway, inv: Invocation) -> web.Response:
    metrics.INVOCATIONS.labels(inv.function, str(inv.status)).inc()
    headers = _headers(inv)
    if inv.status is Status.SUCCEEDED:
        output = await gw.store.output(inv.id)
        return web.Response(body=output, headers=headers, content_type="application/octet-stream")
    code, status = {
        Status.FAILED: ("function_failed", 500),
        Status.TIMED_OUT: ("function_timed_out", 504),
        Status.CANCELLED: ("cancelled", 409),
    }[inv.status]
    response = error(
        status,
        code,
        inv.error or str(inv.status),
        id=inv.id,
        status=str(inv.status),
        exit_code=inv.exit_code,
    )
    response.headers.update(headers)
    return response


async def submit_job(request: web.Request) -> web.Response:
    """POST /v1/jobs: a one-off job with an inline spec."""
    gw = gateway(request)
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(reason="the body must be a JSON job spec") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="the body must be a JSON object")
    name = str(body.pop("name", "job"))
    payload = body.pop("payload", "")
    payload_b64 = body.pop("payload_base64", None)
    if not NAME_RE.match(name):
        return error(422, "invalid_spec", f"name: must match {NAME_RE.pattern}", field="name")
    data = base64.b64decode(payload_b64) if payload_b64 else str(payload).encode()
    spec = FunctionSpec.from_dict(name, body)
    invocation_id = await _enqueue(gw, request, spec, data, "job")
    return await _accepted(gw, invocation_id, 202)


async def get_invocation(request: web.Request) -> web.Response:
    """GET /v1/invocations/{id}"""
    inv = await gateway(request).store.get(request.match_info["id"])
    return web.json_response(inv.public(), headers=_headers(inv))


async def get_result(request: web.Request) -> web.Response:
    """GET /v1/invocations/{id}/result"""
    inv, output = await gateway(request).store.result(request.match_info["id"])
    return web.Response(body=output, headers=_headers(inv), content_type="application/octet-stream")


async def get_logs(request: web.Request) -> web.StreamResponse:
    """GET /v1/invocations/{id}/logs[?follow=true]"""
    gw = gateway(request)
    invocation_id = request.match_info["id"]
    inv = await gw.store.get(invocation_id)
    if not _flag(request, "follow"):
        return web.json_response({"id": inv.id, "lines": await gw.store.logs(invocation_id)})
    stream = EventStream(gw.redis, gw.keys)
    response = await stream.open(request)
    sent = 0
    async for entry in stream.follow(invocation=invocation_id):
        lines = await gw.store.logs(invocation_id, sent)
        for line in lines:
            await stream.send(response, "log", line)
        sent += len(lines)
        if entry is None or entry.get("type") == "finished":
            inv = await gw.store.get(invocation_id)
            if inv.status.final:
                for line in await gw.store.logs(invocation_id, sent):
                    await stream.send(response, "log", line)
                await stream.send(response, "end", {"id": inv.id, "status": str(inv.status)})
                break
    return response


async def cancel(request: web.Request) -> web.Response:
    """DELETE /v1/invocations/{id}"""
    gw = gateway(request)
    invocation_id = request.match_info["id"]
    result = await gw.store.cancel(invocation_id)
    if result.status == "running":
        await route_cancel(
            gw.redis,
            gw.keys,
            result.worker_id,
            invocation_id,
            result.attempt,
            "cancelled through the API",
        )
    return web.json_response({"id": invocation_id, "status": result.status}, status=202)


async def list_dead_letters(request: web.Request) -> web.Response:
    """GET /v1/dead-letters?limit=: failed invocations (retries exhausted), newest first."""
    gw = gateway(request)
    try:
        limit = max(1, min(1000, int(request.query.get("limit", "100"))))
    except ValueError:
        raise web.HTTPBadRequest(reason="limit must be an integer") from None
    found = []
    for invocation_id in await gw.store.dead_letters(limit):
        with contextlib.suppress(NotFound):  # expired with the retention
            found.append((await gw.store.get(invocation_id)).public())
    return web.json_response({"invocations": found})


async def replay(request: web.Request) -> web.Response:
    """POST /v1/invocations/{id}/replay: run a dead-lettered invocation again (a new one)."""
    gw = gateway(request)
    new_id = await gw.store.replay(request.match_info["id"])
    return await _accepted(gw, new_id, 202)


async def list_invocations(request: web.Request) -> web.Response:
    """GET /v1/invocations?function=&status=&limit="""
    gw = gateway(request)
    status = request.query.get("status")
    if status and status not in {s.value for s in Status}:
        raise web.HTTPBadRequest(reason=f"unknown status {status!r}")
    try:
        limit = max(1, min(1000, int(request.query.get("limit", "50"))))
    except ValueError:
        raise web.HTTPBadRequest(reason="limit must be an integer") from None
    found = await gw.store.list_invocations(
        function=request.query.get("function") or None, status=status, limit=limit
    )
    return web.json_response({"invocations": [i.public() for i in found]})
