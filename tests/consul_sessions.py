"""Sessions and the KV store of the Consul double (see consul_double.py), after
https://developer.hashicorp.com/consul/api-docs/session and .../api-docs/kv: a TTL between
10 s and 24 h, invalidated ``SESSION_TTL_MULTIPLIER`` x TTL after the last renewal as
Consul's leader does (agent/consul/session_ttl.go), lock-delay after an invalidation (not
after a release), ``?acquire``/``?release`` with ``LockIndex``, and blocking reads of one
key that wake when that key changes."""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
SESSION_TTL_MULTIPLIER = 2


def seconds(value: str | None, default: float = 0.0) -> float:
    if not value:
        return default
    match = DURATION.match(value)
    if not match:
        raise web.HTTPBadRequest(text=f"invalid duration {value!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def folded(raw: Any) -> Any:
    """Consul decodes JSON field names case-insensitively (py-consul sends "name", "id")."""
    if isinstance(raw, dict):
        return {k.lower(): folded(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [folded(v) for v in raw]
    return raw


class SessionsAndKV:
    index: int
    sessions: dict[str, dict[str, Any]]
    kv: dict[str, dict[str, Any]]
    lock_delays: dict[str, float]
    acquires: list[tuple[str, bool]]
    changed: asyncio.Condition

    async def bump(self) -> None:
        raise NotImplementedError

    async def blocking(
        self, request: web.Request, current: Callable[[], int] | None = None
    ) -> None:
        raise NotImplementedError

    def answer(self, body: Any, status: int = 200, index: int | None = None) -> web.Response:
        raise NotImplementedError

    async def session_create(self, request: web.Request) -> web.Response:
        body = folded(await request.json()) if await request.read() else {}
        ttl = seconds(body.get("ttl"))
        if body.get("ttl") and not 10 <= ttl <= 86400:
            raise web.HTTPBadRequest(
                text=f"Invalid Session TTL '{body['ttl']}', must be between [10s=24h0m0s]"
            )
        delay = seconds(body.get("lockdelay"), 15.0)
        if delay > 60:
            raise web.HTTPBadRequest(text="Lock-delay must be at most 60s")
        session_id = str(uuid.uuid4())
        self.sessions[session_id] = {
            "ID": session_id,
            "Name": body.get("name", ""),
            "TTL": body.get("ttl", ""),
            "LockDelay": delay,
            "Behavior": body.get("behavior") or "release",
            "ttl": ttl,
            "expires": self.session_deadline(ttl),
            "renewed_at": time.monotonic(),
        }
        await self.bump()
        return self.answer({"ID": session_id})

    def session_deadline(self, ttl: float) -> float | None:
        return time.monotonic() + ttl * SESSION_TTL_MULTIPLIER if ttl else None

    async def session_renew(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            raise web.HTTPNotFound(text=f"Session id '{request.match_info['id']}' not found")
        session["expires"] = self.session_deadline(session["ttl"])
        session["renewed_at"] = time.monotonic()
        return self.answer([{k: v for k, v in session.items() if k[0].isupper()}])

    async def session_destroy(self, request: web.Request) -> web.Response:
        await self.invalidate(request.match_info["id"])
        return self.answer(True)

    async def invalidate(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        for key, entry in list(self.kv.items()):
            if entry.get("Session") == session_id:
                self.lock_delays[key] = time.monotonic() + session["LockDelay"]
                if session["Behavior"] == "delete":
                    del self.kv[key]
                else:
                    entry["Session"] = ""
                    entry["ModifyIndex"] = self.index + 1
        await self.bump()

    def key_index(self, key: str) -> int:
        entry = self.kv.get(key)
        return int(entry["ModifyIndex"]) if entry else self.index

    async def kv_get(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        await self.blocking(request, lambda: self.key_index(key))
        entry = self.kv.get(key)
        if entry is None:
            return self.answer(None, status=404)
        shown = dict(entry)
        shown["Value"] = base64.b64encode(entry["Value"]).decode() if entry["Value"] else None
        if not shown.get("Session"):
            shown.pop("Session", None)
        return self.answer([shown], index=entry["ModifyIndex"])

    async def kv_put(self, request: web.Request) -> web.Response:
        key, value = request.match_info["key"], await request.read()
        entry = self.kv.get(key)
        acquire, release = request.query.get("acquire"), request.query.get("release")
        if acquire or release:
            session = acquire or release
            if session not in self.sessions:
                raise web.HTTPInternalServerError(text=f'invalid session "{session}"')
            held_by = entry.get("Session") if entry else ""
            if acquire:
                delayed = not held_by and self.lock_delays.get(key, 0) > time.monotonic()
                granted = not delayed and held_by in ("", acquire)
                self.acquires.append((self.sessions[acquire]["Name"], granted))
                if not granted:
                    return self.answer(False)
            elif held_by != release:
                return self.answer(False)
        if entry is None:
            entry = self.kv[key] = {
                "Key": key,
                "Flags": 0,
                "LockIndex": 0,
                "Session": "",
                "CreateIndex": self.index + 1,
            }
        if acquire and entry.get("Session") != acquire:
            entry["LockIndex"] += 1
            entry["Session"] = acquire
        if release:
            entry["Session"] = ""
        entry["Value"] = value
        entry["ModifyIndex"] = self.index + 1
        await self.bump()
        return self.answer(True)

    def expire_sessions(self, now: float) -> list[str]:
        return [
            i for i, s in self.sessions.items() if s["expires"] is not None and now > s["expires"]
        ]
