"""The route table: the single source of both the router and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from hodei.api import console, fleet, functions, invocations, logs
from hodei.api.middleware import ANY, SCOPE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    scope: str  # "" = open (health, metrics, docs)
    summary: str
    responses: dict[int, str] = field(default_factory=dict)
    body: str = ""  # "json:<Schema>" or "bytes"
    query: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", fleet.healthz, "", "Liveness", {200: "alive"}),
    Route(
        "GET",
        "/readyz",
        fleet.readyz,
        "",
        "Readiness: Redis answers",
        {200: "ready", 503: "Redis unreachable"},
    ),
    Route("GET", "/metrics", fleet.metrics, "", "Prometheus metrics", {200: "text format"}),
    Route("GET", "/ui", console.page, "", "Web console", {200: "HTML page"}),
    Route(
        "GET",
        "/ui/{asset}",
        console.asset,
        "",
        "Web console files (script, styles)",
        {200: "the file", 404: ""},
    ),
    Route(
        "GET",
        "/v1/functions",
        functions.list_functions,
        "read",
        "List functions (their env values need the admin scope)",
        {200: "json:FunctionList"},
    ),
    Route(
        "PUT",
        "/v1/functions/{name}",
        functions.put_function,
        "admin",
        "Create or replace a function",
        {201: "json:FunctionSpec", 200: "json:FunctionSpec", 400: "", 422: ""},
        body="json:FunctionSpec",
    ),
    Route(
        "GET",
        "/v1/functions/{name}",
        functions.get_function,
        "read",
        "Read a function (its env values need the admin scope)",
        {200: "json:Function", 404: ""},
    ),
    Route(
        "DELETE",
        "/v1/functions/{name}",
        functions.delete_function,
        "admin",
        "Delete a function",
        {204: "deleted", 404: ""},
    ),
    Route(
        "POST",
        "/v1/functions/{name}/invoke",
        invocations.invoke,
        "invoke",
        "Invoke a function: the body is its stdin; synchronous unless asked otherwise",
        {
            200: "bytes",
            202: "json:Accepted",
            400: "",
            404: "",
            409: "",
            413: "",
            429: "",
            500: "",
            503: "",
            504: "",
        },
        body="bytes",
        query=("async", "wait"),
        headers=("Prefer", "X-Callback-Url", "Idempotency-Key", "X-Hodei-Priority", "traceparent"),
    ),
    Route(
        "POST",
        "/v1/jobs",
        invocations.submit_job,
        "invoke",
        "Run a one-off job from an inline spec: admin, or an invoke token running a docker "
        "image the gateway's job_images allow, without network, within invoke_job_budget_s "
        "over its attempts; never under a registered function's name (409)",
        {
            202: "json:Accepted",
            400: "",
            403: "the token lacks the invoke scope, or the spec needs admin",
            409: "",
            422: "",
            429: "",
        },
        body="json:JobSpec",
        headers=("X-Callback-Url", "Idempotency-Key", "X-Hodei-Priority", "traceparent"),
    ),
    Route(
        "GET",
        "/v1/invocations",
        invocations.list_invocations,
        "read",
        "Recent invocations, newest first",
        {200: "json:InvocationList", 400: ""},
        query=("function", "status", "limit", "cursor"),
    ),
    Route(
        "GET",
        "/v1/invocations/{id}",
        invocations.get_invocation,
        "read",
        "An invocation record",
        {200: "json:Invocation", 404: ""},
    ),
    Route(
        "DELETE",
        "/v1/invocations/{id}",
        invocations.cancel,
        "invoke",
        "Cancel an invocation",
        {202: "json:Accepted", 404: "", 409: ""},
    ),
    Route(
        "GET",
        "/v1/invocations/{id}/result",
        invocations.get_result,
        "read",
        "The stdout of a finished invocation",
        {200: "bytes", 404: "", 409: ""},
    ),
    Route(
        "GET",
        "/v1/invocations/{id}/logs",
        logs.get_logs,
        "read",
        "Log lines, a page at a time; with follow=true, server-sent events until the end",
        {200: "json:Logs", 400: "", 404: "", 429: ""},
        query=("offset", "limit", "follow"),
    ),
    Route(
        "GET",
        "/v1/dead-letters",
        invocations.list_dead_letters,
        "read",
        "Failed invocations whose retries are exhausted, newest first",
        {200: "json:InvocationList", 400: ""},
        query=("limit",),
    ),
    Route(
        "POST",
        "/v1/invocations/{id}/replay",
        invocations.replay,
        "invoke",
        "Run a dead-lettered invocation again, as a new invocation; a one-off job's needs "
        "what submitting its spec would (POST /v1/jobs: 403)",
        {
            202: "json:Accepted",
            403: "the token lacks the invoke scope, or the job's spec needs admin",
            404: "",
            409: "",
            429: "",
        },
    ),
    Route(
        "GET",
        "/v1/whoami",
        fleet.whoami,
        ANY,
        "The scopes of the caller's token",
        {200: "json:WhoAmI"},
    ),
    Route("GET", "/v1/workers", fleet.list_workers, "read", "The fleet", {200: "json:WorkerList"}),
    Route(
        "GET",
        "/v1/workers/{id}",
        fleet.get_worker,
        "read",
        "One worker",
        {200: "json:Worker", 404: ""},
    ),
    Route(
        "POST",
        "/v1/workers/{id}/drain",
        fleet.drain_worker,
        "admin",
        "Drain a worker: no new work",
        {202: "json:Worker", 404: "", 409: ""},
    ),
    Route(
        "GET",
        "/v1/queue",
        fleet.queue,
        "read",
        "Queue depth, oldest age, pending reasons",
        {200: "json:Queue"},
    ),
    Route(
        "GET",
        "/v1/events",
        fleet.events,
        "read",
        "Domain events as server-sent events",
        {200: "text/event-stream"},
        query=("invocation", "worker", "since"),
    ),
)


def add_routes(app: web.Application, routes: tuple[Route, ...] = ROUTES) -> None:
    for route in routes:
        setattr(route.handler, SCOPE, route.scope or "read")
        app.router.add_route(route.method, route.path, route.handler)
