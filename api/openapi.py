"""The OpenAPI 3.1 document, generated from the route table: every operation with its
scope (401 and 403 declared where a token is needed), its path, query and header
parameters with the patterns and bounds the gateway checks, and its bodies' schemas."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from hodei import __version__, tracing
from hodei.api.fleet import EVENT_ID_RE
from hodei.api.logs import LOG_PAGE_MAX
from hodei.api.middleware import ANY, METRICS_PATH
from hodei.api.openapi_schemas import (
    CURSOR,
    INVOCATION_ID,
    NAME,
    PRIORITY,
    SCHEMAS,
    STATUS,
    pattern,
    ref,
)
from hodei.api.requests import CALLBACK_RE
from hodei.api.routes import ROUTES, Route

PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "name": NAME,
    "id": INVOCATION_ID,
    "asset": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
}
WORKER_ID = {"type": "string", "minLength": 1, "maxLength": 256}
QUERY_PARAMETERS: dict[str, dict[str, Any]] = {
    "async": {"type": "boolean", "description": "answer 202 at once"},
    "wait": {"type": "number", "minimum": 0, "description": "seconds (capped by max_wait_s)"},
    "follow": {"type": "boolean", "description": "server-sent events until the end"},
    "function": NAME,
    "status": STATUS,
    "limit": {"type": "integer", "minimum": 1, "maximum": 1000},
    "cursor": CURSOR,
    "offset": {"type": "integer", "minimum": 0, "maximum": 10**9},
    "invocation": INVOCATION_ID,
    "worker": WORKER_ID,
    "since": {"type": "string", "pattern": pattern(EVENT_ID_RE)},
}
QUERY_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("/v1/invocations/{id}/logs", "limit"): {
        "type": "integer",
        "minimum": 1,
        "maximum": LOG_PAGE_MAX,
    },
}
HEADER_PARAMETERS: dict[str, dict[str, Any]] = {
    "Prefer": {"type": "string", "description": "respond-async: answer 202 at once"},
    "X-Callback-Url": {
        "type": "string",
        "format": "uri",
        "maxLength": 2048,
        "pattern": pattern(CALLBACK_RE),
        "description": "POSTed the result when the invocation ends; public addresses only "
        "(and the gateway's callback_allow), no redirects",
    },
    "Idempotency-Key": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "description": "the same key from the same token with the same payload: the same "
        "invocation; with another payload: 422",
    },
    "X-Hodei-Priority": PRIORITY,
    "traceparent": {"type": "string", "pattern": tracing.TRACEPARENT.pattern},
}
UNAUTHORIZED = "no valid bearer token (when the gateway has API tokens)"


def _content(kind: str) -> dict[str, Any]:
    if kind.startswith("json:"):
        return {"application/json": {"schema": ref(kind[5:])}}
    if kind == "bytes":
        return {
            "application/octet-stream": {
                "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
            }
        }
    if kind == "text/event-stream":
        return {"text/event-stream": {"schema": {"type": "string"}}}
    return {"application/json": {"schema": ref("Error")}}


def _response(status: int, kind: str) -> dict[str, Any]:
    if kind.startswith("json:") or kind in ("bytes", "text/event-stream"):
        return {"description": kind, "content": _content(kind)}
    if status >= 400:
        return {"description": kind or "error", "content": _content("")}
    return {"description": kind or "done"}


def _responses(route: Route) -> dict[str, Any]:
    responses = dict(route.responses)
    if route.scope:
        responses.setdefault(401, UNAUTHORIZED)
        if route.scope != ANY:
            responses.setdefault(403, f"the token lacks the {route.scope} scope")
    elif route.path == METRICS_PATH:
        responses.setdefault(401, "no metrics token (when the gateway has a metrics_token)")
    return {str(status): _response(status, kind) for status, kind in sorted(responses.items())}


def _parameters(route: Route) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name in re.findall(r"{(\w+)}", route.path):
        schema = WORKER_ID if route.path.startswith("/v1/workers") else PATH_PARAMETERS[name]
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    for name in route.query:
        schema = QUERY_OVERRIDES.get((route.path, name), QUERY_PARAMETERS[name])
        params.append({"name": name, "in": "query", "schema": schema})
    for name in route.headers:
        params.append({"name": name, "in": "header", "schema": HEADER_PARAMETERS[name]})
    return params


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
        "responses": _responses(route),
    }
    params = _parameters(route)
    if params:
        op["parameters"] = params
    if route.body:
        op["requestBody"] = {"required": route.body != "bytes", "content": _content(route.body)}
    if route.scope == ANY:
        op["security"] = [{"bearer": []}]
    elif route.scope:
        op["security"] = [{"bearer": [route.scope]}]
        op["x-hodei-scope"] = route.scope
    elif route.path == METRICS_PATH:
        op["security"] = [{}, {"bearer": []}]
    return op


def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1"}},
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Hodei",
            "version": __version__,
            "description": "Invoke functions on a Hodei fleet. With API tokens configured, "
            "every /v1 route needs `Authorization: Bearer <token>` with the scope its "
            "operation names (admin may do everything).",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def serve_document(request: web.Request) -> web.Response:
    return web.json_response(document())
