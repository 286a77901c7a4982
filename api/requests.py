"""Reading what a request carries: every query value, header and body is checked here, so
bad input gets a 400/413/422 naming what is wrong, never a 500."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

from aiohttp import web

from hodei import tracing
from hodei.api.callback_guard import CallbackPolicy
from hodei.errors import InvalidSpec, NotFound
from hodei.plugin.models import NAME_RE, Priority, valid_name

# Who is calling (a digest of the token, or "anonymous" without tokens): what idempotency
# keys and stream caps are scoped to. Set by the auth middleware.
CALLER = web.RequestKey("caller", str)
SCOPES = web.RequestKey("scopes", frozenset[str])  # what the caller's token may do
ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
CURSOR_RE = re.compile(r"\d{1,20}")
CALLBACK_RE = re.compile(r"https?://[^\s/?#@]+(?:[/?#]\S*)?")
MAX_JSON_DEPTH = 32


def flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


def integer(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 12:
        raise web.HTTPBadRequest(reason=f"{name} must be a whole number")
    return max(low, min(high, int(raw)))


def cursor(request: web.Request) -> str | None:
    raw = request.query.get("cursor")
    if raw is None or raw == "":
        return None
    if not CURSOR_RE.fullmatch(raw):
        raise web.HTTPBadRequest(reason="cursor is not one this API gave")
    return raw


def valid_id(request: web.Request) -> str:
    """The invocation id of the path; an id no invocation can have is simply unknown."""
    invocation_id = request.match_info["id"]
    if not ID_RE.fullmatch(invocation_id):
        raise NotFound(f"invocation {invocation_id[:64]!r} does not exist")
    return invocation_id


def priority(request: web.Request) -> Priority | None:
    raw = request.headers.get("X-Hodei-Priority")
    if raw is None:
        return None
    try:
        return Priority(raw.lower())
    except ValueError:
        raise web.HTTPBadRequest(reason="X-Hodei-Priority must be high, normal or low") from None


def wait_s(request: web.Request, default: float, maximum: float) -> float:
    raw = request.query.get("wait")
    if raw is None:
        return default
    try:
        wait = float(raw.removesuffix("s"))
    except ValueError:
        raise web.HTTPBadRequest(reason="wait must be a number of seconds") from None
    if not math.isfinite(wait) or wait < 0:
        raise web.HTTPBadRequest(reason="wait must be a finite number of seconds >= 0")
    return min(wait, maximum)


def callback_url(request: web.Request, policy: CallbackPolicy) -> str:
    url = request.headers.get("X-Callback-Url", "")
    if not url:
        return url
    if len(url) > 2048 or not CALLBACK_RE.fullmatch(url):
        raise web.HTTPBadRequest(reason="X-Callback-Url must be an http(s) URL")
    if (reason := policy.literal_refusal(url)) is not None:
        raise web.HTTPBadRequest(reason=f"X-Callback-Url: {reason}: callbacks may not reach it")
    return url


def traceparent(request: web.Request) -> str:
    value = request.headers.get("traceparent", "").strip().lower()
    return value if tracing.valid(value) else ""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_JSON_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


async def json_object(request: web.Request, what: str) -> dict[str, Any]:
    """The body as a JSON object: NaN and Infinity refused, nesting bounded."""
    try:
        body = json.loads(await request.read(), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise web.HTTPBadRequest(reason=f"the body must be a JSON {what}") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(reason="the body must be a JSON object")
    if _depth(body) > MAX_JSON_DEPTH:
        raise web.HTTPBadRequest(reason=f"the body nests deeper than {MAX_JSON_DEPTH} levels")
    return body


async def job_body(request: web.Request) -> tuple[str, bytes, dict[str, Any]]:
    """A one-off job: its name, its payload, and the rest (its spec)."""
    body = await json_object(request, "job spec")
    name = body.pop("name", "job")
    if not isinstance(name, str) or not valid_name(name):
        raise InvalidSpec("name", f"must match {NAME_RE.pattern}")
    text = body.pop("payload", "")
    encoded = body.pop("payload_base64", None)
    if encoded is not None:
        if not isinstance(encoded, str) or not encoded.isascii():
            raise InvalidSpec("payload_base64", "must be base64 text")
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidSpec("payload_base64", "is not valid base64") from None
    elif isinstance(text, str):
        payload = text.encode()
    else:
        raise InvalidSpec("payload", "must be a string")
    return name, payload, body
