"""Request middleware: authentication and scopes, and errors in the contract's shape."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from aiohttp import web

from hodei.api import metrics
from hodei.api.auth import SCOPES as SCOPE_NAMES
from hodei.api.requests import CALLER, SCOPES
from hodei.api.state import error, gateway
from hodei.errors import Conflict, IdempotencyMismatch, InvalidSpec, NotFound, QueueFull
from hodei.plugin.data.connection import REDIS_DOWN

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SCOPE = "hodei_scope"  # the scope a route needs, set on its handler
ANY = "any"  # a route any valid token may call
METRICS_PATH = "/metrics"  # open, unless the gateway has a metrics_token


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except InvalidSpec as exc:
        return error(422, "invalid_spec", str(exc), field=exc.field)
    except IdempotencyMismatch as exc:
        return error(422, "idempotency_key_reused", str(exc), id=exc.invocation_id)
    except NotFound as exc:
        return error(404, "not_found", str(exc))
    except Conflict as exc:
        return error(409, "conflict", str(exc))
    except QueueFull as exc:
        response = error(429, "too_many_requests", str(exc))
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except web.HTTPRequestEntityTooLarge as exc:
        return error(413, "payload_too_large", exc.text or "payload too large")
    except web.HTTPException as exc:
        if exc.status >= 400:
            # The status says what kind of error (bad_request, not_found...); the reason
            # says what was wrong.
            kind = HTTPStatus(exc.status).phrase.lower().replace(" ", "_").replace("-", "_")
            return error(exc.status, kind, exc.reason or kind)
        raise
    except ConnectionResetError:
        raise  # the client went away: nobody to answer, nothing to log
    except REDIS_DOWN as exc:
        log.warning("Redis unavailable: %s", exc)
        return error(503, "redis_unavailable", "the queue store (Redis) is unavailable")
    except Exception:
        # A bug, or data no Hodei wrote: the contract's body all the same, and the log.
        log.exception("%s %s failed", request.method, request.path)
        return error(500, "internal_error", "the gateway failed to answer (see its log)")


def _unauthorized() -> web.Response:
    response = error(401, "unauthorized", "a valid bearer token is required")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    gw = gateway(request)
    tokens = gw.tokens
    if request.path == METRICS_PATH and gw.settings.metrics_token:
        if not tokens.may_scrape(
            request.headers.get("Authorization", ""), gw.settings.metrics_token
        ):
            return _unauthorized()
        return await handler(request)
    if not tokens.enabled:
        request[CALLER] = "anonymous"
        request[SCOPES] = SCOPE_NAMES
        return await handler(request)
    if not request.path.startswith("/v1"):
        return await handler(request)
    caller = tokens.identify(request.headers.get("Authorization", ""))
    if caller is None:
        return _unauthorized()
    request[CALLER] = caller.id
    request[SCOPES] = caller.scopes
    needed = getattr(request.match_info.handler, SCOPE, "admin")
    if needed != ANY and needed not in caller.scopes and "admin" not in caller.scopes:
        return error(403, "forbidden", f"this route needs the {needed} scope")
    return await handler(request)


@web.middleware
async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics.IN_FLIGHT.inc()
    try:
        return await handler(request)
    finally:
        metrics.IN_FLIGHT.dec()
