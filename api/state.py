"""What every request handler needs, reachable through one typed AppKey."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from hodei.api.auth import TokenTable
from hodei.api.callback_guard import CallbackPolicy
from hodei.api.settings import GatewaySettings
from hodei.api.streams import EventHub
from hodei.api.waiter import Completions
from hodei.plugin.data import DataLayer


@dataclass
class Gateway:
    settings: GatewaySettings
    data: DataLayer
    completions: Completions
    hub: EventHub
    tokens: TokenTable
    callback_policy: CallbackPolicy


GATEWAY = web.AppKey("gateway", Gateway)


def gateway(request: web.Request) -> Gateway:
    return request.app[GATEWAY]


def error(http_status: int, code: str, message: str, /, **extra: Any) -> web.Response:
    """The contract's error shape: {"error": {"code", "message"}} (+ extra fields)."""
    return web.json_response(
        {"error": {"code": code, "message": message}, **extra}, status=http_status, dumps=json.dumps
    )
