"""Invoking functions and reading invocations: invoke, one-off jobs, record, result,
cancel, list, dead letters, replay (logs: api/logs.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid

from aiohttp import web

from hodei import tracing
from hodei.api import metrics
from hodei.api.requests import (
    CALLER,
    SCOPES,
    callback_url,
    cursor,
    flag,
    integer,
    job_body,
    priority,
    traceparent,
    valid_id,
    wait_s,
)
from hodei.api.scopes import check_job, check_replay, refuse_hidden_env
from hodei.api.state import Gateway, error, gateway
from hodei.api.waiter import Waiter
from hodei.domain import function_label
from hodei.errors import NotFound, QueueFull
from hodei.logs import inv
from hodei.plugin.data.invocations import CancelOutcome, Enqueued, Idempotency, job_name_taken
from hodei.plugin.models import FunctionSpec, Invocation, Status, valid_name

log = logging.getLogger(__name__)


def _headers(inv: Invocation) -> dict[str, str]:
    headers = {"X-Hodei-Invocation-Id": inv.id, "X-Hodei-Status": str(inv.status)}
    if inv.exit_code is not None:
        headers["X-Hodei-Exit-Code"] = str(inv.exit_code)
    if inv.duration_ms is not None:
        headers["X-Hodei-Duration-Ms"] = str(inv.duration_ms)
    if inv.worker_id:
        headers["X-Hodei-Worker"] = inv.worker_id
    if inv.cold_start is not None:
        headers["X-Hodei-Cold-Start"] = "true" if inv.cold_start else "false"
    return headers


def _idempotency(request: web.Request, payload: bytes) -> Idempotency | None:
    key = request.headers.get("Idempotency-Key", "")
    if not key:
        return None
    if len(key) > 255 or not key.isprintable():
        raise web.HTTPBadRequest(reason="Idempotency-Key must be at most 255 printable characters")
    digest = hashlib.sha256(payload).hexdigest()[:32]
    return Idempotency(request[CALLER], hashlib.sha256(key.encode()).hexdigest()[:32], digest)


async def invoke(request: web.Request) -> web.StreamResponse:
    """POST /v1/functions/{name}/invoke"""
    gw = gateway(request)
    started = time.perf_counter()
    name = request.match_info["name"]
    if not valid_name(name):
        raise NotFound(f"function {name[:64]!r} does not exist")
    asynchronous = flag(request, "async") or "respond-async" in request.headers.get("Prefer", "")
    wait = wait_s(request, gw.settings.default_wait_s, gw.settings.max_wait_s)
    payload = await request.read()
    invocation_id = uuid.uuid4().hex
    waiter = None if asynchronous else gw.completions.expect(invocation_id)
    mode = "async" if asynchronous else "sync"
    try:
        enqueued = await _enqueue(
            gw,
            request,
            name,
            payload,
            mode,
            invocation_id=invocation_id,
            awaited_by="" if asynchronous else gw.completions.gateway_id,
        )
        if waiter is None:
            if not enqueued.duplicate:  # just recorded: no need to read it back
                return _accepted_new(enqueued.id)
            return await _accepted(gw, enqueued.id)
        if enqueued.duplicate:  # an earlier invocation with this idempotency key
            gw.completions.forget(invocation_id, waiter)
            invocation_id = enqueued.id
            waiter = gw.completions.expect(invocation_id)
        return await _wait_for_result(
            gw, invocation_id, waiter, wait, just_queued=not enqueued.duplicate
        )
    finally:
        if waiter is not None:
            gw.completions.forget(invocation_id, waiter)
        metrics.INVOKE_LATENCY.labels(mode).observe(time.perf_counter() - started)


async def _enqueue(
    gw: Gateway,
    request: web.Request,
    function: str,
    payload: bytes,
    mode: str,
    *,
    invocation_id: str | None = None,
    job_revision: str = "",
    awaited_by: str = "",
) -> Enqueued:
    """Record and enqueue one invocation under its submit span."""
    attributes = {"hodei.function": function}
    if invocation_id:
        attributes["hodei.invocation_id"] = invocation_id
    parent, end_submit = tracing.start("submit", traceparent(request), attributes)
    try:
        enqueued = await gw.data.invocations.enqueue(
            function,
            payload,
            job_revision=job_revision,
            priority=priority(request),
            traceparent=parent,
            callback_url=callback_url(request, gw.callback_policy),
            idempotency=_idempotency(request, payload),
            invocation_id=invocation_id,
            awaited_by=awaited_by,
        )
    except QueueFull:
        metrics.REJECTED.labels("backpressure").inc()
        end_submit("queue full")
        raise
    except Exception as exc:
        end_submit(type(exc).__name__)
        raise
    end_submit()
    metrics.INVOCATIONS.labels(function_label(function, job_revision), "accepted").inc()
    log.info(
        "invocation %s of %s accepted (%s, trace %s)",
        enqueued.id,
        function,
        mode,
        tracing.trace_id(parent),
        extra=inv(enqueued.id, function=function),
    )
    return enqueued


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


async def _accepted(gw: Gateway, invocation_id: str) -> web.Response:
    found = await gw.data.invocations.get(invocation_id)
    return web.json_response(
        {"id": found.id, "status": str(found.status)},
        status=202,
        headers={**_headers(found), "Location": f"/v1/invocations/{found.id}"},
    )


async def _wait_for_result(
    gw: Gateway, invocation_id: str, waiter: Waiter, wait: float, just_queued: bool
) -> web.Response:
    """The final answer, or a 504/503 when waiting ends first. ``waiter`` resolves when the
    invocation's completion is heard, with its answer when the notice brought it; each
    time, a new one is expected, and the last one is forgotten here (the caller forgets
    only the first)."""
    deadline = asyncio.get_running_loop().time() + wait
    # Recorded a moment ago: nothing to read before its completion is heard.
    look = not just_queued or gw.completions.closing
    try:
        while True:
            if look:
                response = await _final_or_given_up(gw, invocation_id, deadline, wait)
                if response is not None:
                    return response
            look = True
            with contextlib.suppress(TimeoutError):
                left = deadline - asyncio.get_running_loop().time()
                await asyncio.wait_for(asyncio.shield(waiter), max(0.0, left))
            if waiter.done():  # heard (and so no longer held by completions)
                answer = waiter.result()
                if answer is not None and answer.invocation.status.final:
                    return _final_response(answer.invocation, answer.output)
                waiter = gw.completions.expect(invocation_id)
    finally:
        gw.completions.forget(invocation_id, waiter)


async def _final_or_given_up(
    gw: Gateway, invocation_id: str, deadline: float, wait: float
) -> web.Response | None:
    """The answer if the invocation is final, or if waiting must end (shutdown, deadline)."""
    found, output = await gw.data.invocations.get_with_output(invocation_id)
    if found.status.final:
        return _final_response(found, output)
    if gw.completions.closing:
        message = "this gateway is shutting down; the invocation goes on: fetch it at"
        return _not_final(found, 503, "shutting_down", message, {"Retry-After": "1"})
    if deadline - asyncio.get_running_loop().time() <= 0:
        why = f" ({found.pending_reason})" if found.pending_reason else ""
        message = f"the invocation did not finish within {wait:g}s{why}; fetch it later at"
        return _not_final(found, 504, "wait_timeout", message)
    return None


def _not_final(
    found: Invocation, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """Waiting ended before the invocation did: where to fetch it later."""
    location = f"/v1/invocations/{found.id}"
    response = error(
        status,
        code,
        f"{message} {location}",
        id=found.id,
        status=str(found.status),
        pending_reason=found.pending_reason or None,
    )
    response.headers.update({**_headers(found), "Location": location, **(headers or {})})
    return response


def _final_response(found: Invocation, output: bytes) -> web.Response:
    label = function_label(found.function, found.revision)
    metrics.INVOCATIONS.labels(label, str(found.status)).inc()
    headers = _headers(found)
    if found.status is Status.SUCCEEDED:
        return web.Response(body=output, headers=headers, content_type="application/octet-stream")
    code, status = {
        Status.FAILED: ("function_failed", 500),
        Status.TIMED_OUT: ("function_timed_out", 504),
        Status.CANCELLED: ("cancelled", 409),
    }[found.status]
    response = error(
        status,
        code,
        found.error or str(found.status),
        id=found.id,
        status=str(found.status),
        exit_code=found.exit_code,
    )
    response.headers.update(headers)
    return response


async def submit_job(request: web.Request) -> web.Response:
    """POST /v1/jobs: a one-off job with an inline spec (admin, or an allow-listed image
    within the invoke tokens' time budget: api/scopes.py)."""
    gw = gateway(request)
    name, payload, raw_spec = await job_body(request)
    refuse_hidden_env(raw_spec)
    spec = FunctionSpec.from_dict(name, raw_spec)
    check_job(spec, request[SCOPES], gw.settings, "submit")
    # enqueue.lua refuses it too, atomically; this spares storing the spec of a refusal.
    if await gw.data.functions.exists(spec.name):
        raise job_name_taken(f"function {spec.name!r}")
    revision = await gw.data.functions.store_revision(spec)
    enqueued = await _enqueue(gw, request, spec.name, payload, "job", job_revision=revision)
    if enqueued.duplicate:
        return await _accepted(gw, enqueued.id)
    return _accepted_new(enqueued.id)


async def get_invocation(request: web.Request) -> web.Response:
    """GET /v1/invocations/{id}"""
    found = await gateway(request).data.invocations.get(valid_id(request))
    return web.json_response(found.public(), headers=_headers(found))


async def get_result(request: web.Request) -> web.Response:
    """GET /v1/invocations/{id}/result"""
    found, output = await gateway(request).data.invocations.result(valid_id(request))
    return web.Response(
        body=output, headers=_headers(found), content_type="application/octet-stream"
    )


async def cancel(request: web.Request) -> web.Response:
    """DELETE /v1/invocations/{id}"""
    invocation_id = valid_id(request)
    outcome = await gateway(request).data.invocations.cancel(
        invocation_id, "cancelled through the API"
    )
    status = "cancelled" if outcome is CancelOutcome.CANCELLED else "running"
    return web.json_response({"id": invocation_id, "status": status}, status=202)


async def list_dead_letters(request: web.Request) -> web.Response:
    """GET /v1/dead-letters?limit=: failed invocations (retries exhausted), newest first."""
    limit = integer(request, "limit", 100, 1, 1000)
    found = await gateway(request).data.invocations.dead_letters(limit)
    return web.json_response({"invocations": [i.public() for i in found]})


async def replay(request: web.Request) -> web.Response:
    """POST /v1/invocations/{id}/replay: run a dead-lettered invocation again (a new one);
    a one-off job's replay needs what submitting its spec would."""
    gw = gateway(request)
    invocation_id = valid_id(request)
    await check_replay(gw, invocation_id, request[SCOPES])
    new_id = await gw.data.invocations.replay(invocation_id)
    return _accepted_new(new_id)


async def list_invocations(request: web.Request) -> web.Response:
    """GET /v1/invocations?function=&status=&limit=&cursor="""
    raw_status = request.query.get("status")
    if raw_status and raw_status not in {s.value for s in Status}:
        raise web.HTTPBadRequest(reason=f"unknown status {raw_status[:40]!r}")
    function = request.query.get("function") or None
    if function is not None and not valid_name(function):
        return web.json_response({"invocations": [], "next_cursor": None})
    page = await gateway(request).data.invocations.recent(
        function=function,
        status=Status(raw_status) if raw_status else None,
        limit=integer(request, "limit", 50, 1, 1000),
        cursor=cursor(request),
    )
    return web.json_response(
        {"invocations": [i.public() for i in page.invocations], "next_cursor": page.next_cursor}
    )
