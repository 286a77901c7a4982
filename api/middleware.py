"""Request middleware: authentication and scopes, and errors in the contract's shape."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hodei.api import metrics
from hodei.api.state import error, gateway
from hodei.errors import Conflict, InvalidSpec, NotFound, QueueFull

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SCOPE = "hodei_scope"  # the scope a route needs, set on its handler


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except InvalidSpec as exc:
        return error(422, "invalid_spec", str(exc), field=exc.field)
    except NotFound as exc:
        return error(404, "not_found", str(exc))
    except Conflict as exc:
        return error(409, "conflict", str(exc))
    except QueueFull as exc:
        response = error(429, "too_many_requests", str(exc))
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        log.warning("Redis unavailable: %s", exc)
        return error(503, "redis_unavailable", "the queue store (Redis) is unavailable")
    except web.HTTPRequestEntityTooLarge as exc:
        return error(413, "payload_too_large", exc.text or "payload too large")
    except web.HTTPException as exc:
        if exc.status >= 400:
            code = (exc.reason or "error").lower().replace(" ", "_")
            return error(exc.status, code, exc.reason or "error")
        raise


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    tokens = gateway(request).tokens
    if not tokens.enabled or not request.path.startswith("/v1"):
        return await handler(request)
    scopes = tokens.scopes_of(request.headers.get("Authorization", ""))
    if scopes is None:
        response = error(401, "unauthorized", "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    route_handler = request.match_info.handler
    needed = getattr(route_handler, SCOPE, "admin")
    if needed not in scopes and "admin" not in scopes:
        return error(403, "forbidden", f"this route needs the {needed} scope")
    return await handler(request)


@web.middleware
async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics.IN_FLIGHT.inc()
    try:
        return await handler(request)
    finally:
        metrics.IN_FLIGHT.dec()
