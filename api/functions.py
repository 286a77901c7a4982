"""Function registry routes: create or replace, read, list, delete."""

from __future__ import annotations

import json

from aiohttp import web

from hodei.api.state import gateway
from hodei.plugin.models import FunctionSpec


async def put_function(request: web.Request) -> web.Response:
    """PUT /v1/functions/{name}: 201 when created, 200 when replaced."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise web.HTTPBadRequest(reason="the body must be a JSON function spec") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="the body must be a JSON object")
    body.pop("name", None)
    spec = FunctionSpec.from_dict(request.match_info["name"], body)
    created = await gateway(request).store.put_function(spec)
    return web.json_response(spec.to_dict(), status=201 if created else 200)


async def get_function(request: web.Request) -> web.Response:
    """GET /v1/functions/{name}"""
    spec = await gateway(request).store.get_function(request.match_info["name"])
    return web.json_response(spec.to_dict())


async def list_functions(request: web.Request) -> web.Response:
    """GET /v1/functions"""
    specs = await gateway(request).store.list_functions()
    return web.json_response({"functions": [s.to_dict() for s in specs]})


async def delete_function(request: web.Request) -> web.Response:
    """DELETE /v1/functions/{name}"""
    await gateway(request).store.delete_function(request.match_info["name"])
    return web.Response(status=204)
