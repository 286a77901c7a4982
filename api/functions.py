"""Function registry routes: create or replace, read, list, delete."""

from __future__ import annotations

from aiohttp import web

from hodei.api.requests import SCOPES, json_object
from hodei.api.scopes import function_view, refuse_hidden_env
from hodei.api.state import gateway
from hodei.errors import NotFound
from hodei.plugin.models import FunctionSpec, valid_name


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if not valid_name(name):
        raise NotFound(f"function {name[:64]!r} does not exist")
    return name


async def put_function(request: web.Request) -> web.Response:
    """PUT /v1/functions/{name}: 201 when created, 200 when replaced."""
    body = await json_object(request, "function spec")
    body.pop("name", None)
    refuse_hidden_env(body)
    spec = FunctionSpec.from_dict(request.match_info["name"], body)
    created = await gateway(request).data.functions.put(spec)
    return web.json_response(spec.to_dict(), status=201 if created else 200)


async def get_function(request: web.Request) -> web.Response:
    """GET /v1/functions/{name}"""
    spec = await gateway(request).data.functions.get(_name(request))
    return web.json_response(function_view(spec, request[SCOPES]))


async def list_functions(request: web.Request) -> web.Response:
    """GET /v1/functions"""
    specs = await gateway(request).data.functions.all()
    scopes = request[SCOPES]
    return web.json_response({"functions": [function_view(s, scopes) for s in specs]})


async def delete_function(request: web.Request) -> web.Response:
    """DELETE /v1/functions/{name}"""
    await gateway(request).data.functions.delete(_name(request))
    return web.Response(status=204)
