"""What every request handler needs, reachable through one typed AppKey."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hodei.api.auth import TokenTable
from hodei.api.settings import GatewaySettings
from hodei.api.waiter import Completions
from hodei.plugin.keys import Keys
from hodei.plugin.registry import Registry
from hodei.plugin.scripts import RedisClient, Scripts
from hodei.plugin.store import Store


@dataclass
class Gateway:
    settings: GatewaySettings
    redis: RedisClient
    keys: Keys
    scripts: Scripts
    store: Store
    registry: Registry
    completions: Completions
    tokens: TokenTable


GATEWAY = web.AppKey("gateway", Gateway)


def gateway(request: web.Request) -> Gateway:
    return request.app[GATEWAY]


def error(http_status: int, code: str, message: str, /, **extra: Any) -> web.Response:
    """The contract's error shape: {"error": {"code", "message"}} (+ extra fields)."""
    return web.json_response(
        {"error": {"code": code, "message": message}, **extra}, status=http_status, dumps=json.dumps
    )
