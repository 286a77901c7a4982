"""The OpenAPI 3.1 document, generated from the route table."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from hodei import __version__
from hodei.api.routes import ROUTES, Route

RESOURCES = {
    "type": "object",
    "properties": {
        "cpu_millicores": {"type": "integer", "minimum": 1},
        "memory_mb": {"type": "integer", "minimum": 1},
        "gpus": {"type": "integer", "minimum": 0},
    },
}
SPEC_PROPERTIES: dict[str, Any] = {
    "runtime": {"enum": ["process", "docker"]},
    "image": {"type": "string"},
    "command": {"type": "array", "items": {"type": "string"}},
    "env": {"type": "object", "additionalProperties": {"type": "string"}},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "resources": RESOURCES,
    "timeout_s": {"type": "number", "exclusiveMinimum": 0},
    "queue_timeout_s": {"type": "number", "exclusiveMinimum": 0},
    "max_retries": {"type": "integer", "minimum": 0},
    "priority": {"enum": ["high", "normal", "low"]},
    "concurrency": {"type": "integer", "minimum": 0},
    "network": {"type": "boolean"},
}
NULLABLE_NUMBER = {"type": ["number", "null"]}
SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "FunctionSpec": {
        "type": "object",
        "properties": {"name": {"type": "string"}, **SPEC_PROPERTIES},
    },
    "JobSpec": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "payload": {"type": "string"},
            "payload_base64": {"type": "string", "contentEncoding": "base64"},
            **SPEC_PROPERTIES,
        },
    },
    "FunctionList": {
        "type": "object",
        "properties": {
            "functions": {"type": "array", "items": {"$ref": "#/components/schemas/FunctionSpec"}}
        },
    },
    "Accepted": {
        "type": "object",
        "properties": {"id": {"type": "string"}, "status": {"type": "string"}},
    },
    "Invocation": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "function": {"type": "string"},
            "status": {
                "enum": ["queued", "running", "succeeded", "failed", "timed_out", "cancelled"]
            },
            "attempt": {"type": "integer"},
            "priority": {"enum": ["high", "normal", "low"]},
            "worker_id": {"type": ["string", "null"]},
            "exit_code": {"type": ["integer", "null"]},
            "error": {"type": ["string", "null"]},
            "pending_reason": {"type": ["string", "null"]},
            "created_at": {"type": "number"},
            "started_at": NULLABLE_NUMBER,
            "finished_at": NULLABLE_NUMBER,
            "duration_ms": {"type": ["integer", "null"]},
            "trace_id": {
                "type": ["string", "null"],
                "description": "W3C trace id of the invocation",
            },
        },
    },
    "InvocationList": {
        "type": "object",
        "properties": {
            "invocations": {"type": "array", "items": {"$ref": "#/components/schemas/Invocation"}}
        },
    },
    "Logs": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "lines": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "ts": {"type": "integer"},
                        "stream": {"type": "string"},
                        "line": {"type": "string"},
                        "attempt": {"type": "integer"},
                    },
                },
            },
        },
    },
    "Worker": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "state": {"type": "string"},
            "labels": {"type": "object"},
            "runtimes": {"type": "array", "items": {"type": "string"}},
            "capacity": {"type": "object"},
            "allocated": {"type": "object"},
            "utilisation": {"type": "object"},
            "jobs": {"type": "array"},
        },
    },
    "WhoAmI": {
        "type": "object",
        "properties": {
            "scopes": {"type": "array", "items": {"enum": ["admin", "invoke", "read"]}},
            "auth": {"type": "boolean"},
        },
    },
    "WorkerList": {
        "type": "object",
        "properties": {
            "workers": {"type": "array", "items": {"$ref": "#/components/schemas/Worker"}}
        },
    },
    "Queue": {
        "type": "object",
        "properties": {
            "depth": {"type": "object"},
            "retrying": {"type": "integer"},
            "oldest_age_s": {"type": "number"},
            "pending": {"type": "array"},
        },
    },
}


def _content(kind: str) -> dict[str, Any]:
    if kind.startswith("json:"):
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{kind[5:]}"}}}
    if kind == "bytes":
        return {
            "application/octet-stream": {
                "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
            }
        }
    if kind == "text/event-stream":
        return {"text/event-stream": {"schema": {"type": "string"}}}
    return {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.handler.__name__,
        "summary": route.summary,
        "responses": {
            str(status): {"description": kind or "error", "content": _content(kind)}
            if kind and (kind.startswith("json:") or kind in ("bytes", "text/event-stream"))
            else {
                "description": kind or "error",
                **({"content": _content("")} if status >= 400 else {}),
            }
            for status, kind in route.responses.items()
        },
    }
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    params += [{"name": q, "in": "query", "schema": {"type": "string"}} for q in route.query]
    params += [{"name": h, "in": "header", "schema": {"type": "string"}} for h in route.headers]
    if params:
        op["parameters"] = params
    if route.body:
        op["requestBody"] = {"required": route.body != "bytes", "content": _content(route.body)}
    if route.scope:
        op["security"] = [{"bearer": [route.scope]}]
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
            "description": "Invoke functions on a Hodei fleet.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def serve_document(request: web.Request) -> web.Response:
    return web.json_response(document())
