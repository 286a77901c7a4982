"""A small in-process Consul for the tests: the HTTP API Hodei uses, with Consul's documented
behaviour (https://developer.hashicorp.com/consul/api-docs).

- Service registration with explicit ``CheckID``s; checks start ``critical``. TTL checks
  are updated by ``/v1/agent/check/{pass,warn,fail}``, whose ``note`` lands in ``Output``,
  and turn critical with "TTL expired" when not updated in time. HTTP checks (2xx passing,
  429 warning, else critical) and gRPC health checks (SERVING passing) are really probed,
  first at registration, then every ``Interval``, each within its ``Timeout``; TCP and
  script checks are not run (``set_status`` plays them). ``DeregisterCriticalServiceAfter``
  removes a service critical for that long (at least a minute, as in Consul).
- ``/v1/health/service/{name}`` with ``?passing`` and blocking queries: ``X-Consul-Index``
  on every answer, ``?index=&wait=`` blocks until something changes or the wait ends. As in
  Consul, output-only TTL updates do not change the index.
- Sessions with a TTL between 10 s and 24 h (expired exactly at their TTL; Consul allows
  itself up to twice that), lock-delay, behavior ``release``; KV with ``?acquire`` and
  ``?release``, ``LockIndex``, and lock-delay enforced after a session is invalidated.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from doubles import header_recorder, served
from grpc_health.v1 import health_pb2, health_pb2_grpc

DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
NODE = {"Node": "node-1", "Address": "127.0.0.1", "Datacenter": "dc1"}


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


class ConsulDouble:
    def __init__(self) -> None:
        self.index = 10
        self.services: dict[str, dict[str, Any]] = {}
        self.checks: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.kv: dict[str, dict[str, Any]] = {}
        self.lock_delays: dict[str, float] = {}
        self.tokens: list[str] = []
        # Checks whose updates get lost on the way (a partition between agent and Consul).
        self.unreachable: set[str] = set()
        self.probes: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Condition()
        self.url = ""

    # -- bookkeeping -------------------------------------------------------------------
    async def bump(self) -> None:
        self.index += 1
        async with self.changed:
            self.changed.notify_all()

    async def blocking(self, request: web.Request) -> None:
        """Wait as a blocking query does: until the index passes the caller's, or ``wait``."""
        wanted = int(request.query.get("index", "0") or 0)
        if wanted <= 0 or wanted < self.index:
            return
        wait = min(seconds(request.query.get("wait"), 300.0), 600.0)
        deadline = time.monotonic() + wait
        async with self.changed:
            while self.index <= wanted:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    await asyncio.wait_for(self.changed.wait(), remaining)
                except TimeoutError:
                    return

    def answer(self, body: Any, status: int = 200) -> web.Response:
        return web.json_response(body, status=status, headers={"X-Consul-Index": str(self.index)})

    async def set_status(self, check_id: str, status: str, output: str = "") -> None:
        check = self.checks[check_id]
        changed = check["Status"] != status
        check["Status"], check["Output"] = status, output
        check["critical_since"] = time.monotonic() if status == "critical" else None
        if changed:
            await self.bump()

    # -- the agent's service and check endpoints ----------------------------------------
    async def register(self, request: web.Request) -> web.Response:
        body = folded(await request.json())
        service_id = body.get("id") or body["name"]
        raw_checks = body.get("checks") or ([body["check"]] if body.get("check") else [])
        checks = []
        for n, raw in enumerate(raw_checks):
            kind = next((k for k in ("ttl", "http", "grpc", "tcp", "args") if raw.get(k)), None)
            if kind is None:
                raise web.HTTPBadRequest(text="Invalid check: TTL, HTTP, GRPC, TCP or Args needed")
            if kind != "ttl" and not raw.get("interval"):
                raise web.HTTPBadRequest(text="Check types that require an interval need one")
            check_id = raw.get("checkid") or (
                f"service:{service_id}" + (f":{n + 1}" if len(raw_checks) > 1 else "")
            )
            status = raw.get("status") or "critical"
            checks.append(
                {
                    "CheckID": check_id,
                    "Name": raw.get("name") or f"Service '{body['name']}' check",
                    "ServiceID": service_id,
                    "ServiceName": body["name"],
                    "Type": kind,
                    "Status": status,
                    "Notes": raw.get("notes", ""),
                    "Output": "",
                    "Definition": raw,
                    "ttl": seconds(raw.get("ttl")),
                    "expires": time.monotonic() + seconds(raw.get("ttl")),
                    "deregister_after": seconds(raw.get("deregistercriticalserviceafter")),
                    "critical_since": time.monotonic() if status == "critical" else None,
                    "next_probe": 0.0,
                    "probing": False,
                }
            )
        if request.query.get("replace-existing-checks") in ("true", "1", ""):
            for check_id in [c for c, v in self.checks.items() if v["ServiceID"] == service_id]:
                del self.checks[check_id]
        self.services[service_id] = {
            "ID": service_id,
            "Service": body["name"],
            "Tags": body.get("tags") or [],
            "Address": body.get("address") or "",
            "Port": body.get("port") or 0,
            "Meta": body.get("meta") or {},
        }
        for check in checks:
            self.checks[check["CheckID"]] = check
        await self.bump()
        return web.Response()

    async def deregister(self, request: web.Request) -> web.Response:
        service_id = request.match_info["id"]
        if service_id not in self.services:
            raise web.HTTPNotFound(text=f'Unknown service ID "{service_id}"')
        await self.remove_service(service_id)
        return web.Response()

    async def remove_service(self, service_id: str) -> None:
        self.services.pop(service_id, None)
        for check_id in [c for c, v in self.checks.items() if v["ServiceID"] == service_id]:
            del self.checks[check_id]
        await self.bump()

    async def service(self, request: web.Request) -> web.Response:
        service = self.services.get(request.match_info["id"])
        if service is None:
            raise web.HTTPNotFound(text="unknown service ID")
        return self.answer(service)

    async def ttl_update(self, request: web.Request) -> web.Response:
        check_id = request.match_info["id"]
        check = self.checks.get(check_id)
        if check is None:
            raise web.HTTPNotFound(text=f'Unknown check ID "{check_id}"')
        if check["Type"] != "ttl":
            raise web.HTTPInternalServerError(
                text=f'CheckID "{check_id}" does not have associated TTL'
            )
        if check_id in self.unreachable:
            return web.Response()
        status = {"pass": "passing", "warn": "warning", "fail": "critical"}[
            request.match_info["op"]
        ]
        check["expires"] = time.monotonic() + check["ttl"]
        await self.set_status(check_id, status, request.query.get("note", ""))
        return web.Response()

    def entry(self, service: dict[str, Any]) -> dict[str, Any]:
        checks = [
            {
                "CheckID": "serfHealth",
                "Name": "Serf Health Status",
                "Status": "passing",
                "ServiceID": "",
                "Output": "Agent alive and reachable",
            }
        ]
        for c in self.checks.values():
            if c["ServiceID"] == service["ID"]:
                public = ("CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "Type")
                checks.append({k: c[k] for k in public} | {"ServiceName": service["Service"]})
        return {"Node": dict(NODE), "Service": dict(service), "Checks": checks}

    async def health(self, request: web.Request) -> web.Response:
        await self.blocking(request)
        name = request.match_info["name"]
        entries = [self.entry(s) for s in self.services.values() if s["Service"] == name]
        if "passing" in request.query and request.query["passing"] not in ("false", "0"):
            entries = [e for e in entries if all(c["Status"] == "passing" for c in e["Checks"])]
        return self.answer(entries)

    # -- sessions and KV ---------------------------------------------------------------
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
            "expires": time.monotonic() + ttl if ttl else None,
        }
        await self.bump()
        return self.answer({"ID": session_id})

    async def session_renew(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["id"])
        if session is None:
            raise web.HTTPNotFound(text=f"Session id '{request.match_info['id']}' not found")
        if session["ttl"]:
            session["expires"] = time.monotonic() + session["ttl"]
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

    async def kv_get(self, request: web.Request) -> web.Response:
        await self.blocking(request)
        entry = self.kv.get(request.match_info["key"])
        if entry is None:
            return self.answer(None, status=404)
        shown = dict(entry)
        shown["Value"] = base64.b64encode(entry["Value"]).decode() if entry["Value"] else None
        if not shown.get("Session"):
            shown.pop("Session", None)
        return self.answer([shown])

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
                if held_by and held_by != acquire:
                    return self.answer(False)
                if not held_by and self.lock_delays.get(key, 0) > time.monotonic():
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

    # -- time passing ------------------------------------------------------------------
    async def probe(self, check_id: str, check: dict[str, Any]) -> None:
        definition = check["Definition"]
        timeout = seconds(definition.get("timeout"), 10.0)
        try:
            if check["Type"] == "http":
                client_timeout = aiohttp.ClientTimeout(total=timeout)
                async with (
                    aiohttp.ClientSession(timeout=client_timeout) as http,
                    http.request(definition.get("method") or "GET", definition["http"]) as r,
                ):
                    body = (await r.text())[:200]
                status = "passing" if 200 <= r.status < 300 else "critical"
                status = "warning" if r.status == 429 else status
                output = f"HTTP GET {definition['http']}: {r.status} Output: {body}"
            else:
                target, _, service = definition["grpc"].partition("/")
                async with grpc.aio.insecure_channel(target) as channel:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=service), timeout=timeout
                    )
                serving = reply.status == health_pb2.HealthCheckResponse.SERVING
                status = "passing" if serving else "critical"
                name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                output = f"gRPC check {target}: {name}"
        except Exception as exc:
            status, output = "critical", f"check failed: {exc}"
        if check_id in self.checks:
            await self.set_status(check_id, status, output)
        check["probing"] = False

    async def reap(self) -> None:
        while True:
            now = time.monotonic()
            for check_id, check in list(self.checks.items()):
                probed = check["Type"] in ("http", "grpc") and not check["probing"]
                if probed and now >= check["next_probe"]:
                    check["probing"] = True
                    check["next_probe"] = now + seconds(check["Definition"]["interval"])
                    self.probes.add(asyncio.create_task(self.probe(check_id, check)))
                    self.probes = {t for t in self.probes if not t.done()}
                if (
                    check["Type"] == "ttl"
                    and check["Status"] != "critical"
                    and now > check["expires"]
                ):
                    await self.set_status(check_id, "critical", "TTL expired")
                since, after = check["critical_since"], check["deregister_after"]
                if since is not None and after and now - since > max(after, 60.0):
                    await self.remove_service(check["ServiceID"])
            for session_id, session in list(self.sessions.items()):
                if session["expires"] is not None and now > session["expires"]:
                    await self.invalidate(session_id)
            await asyncio.sleep(0.05)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[header_recorder("X-Consul-Token", self.tokens)])
        app.router.add_put("/v1/agent/service/register", self.register)
        app.router.add_put("/v1/agent/service/deregister/{id}", self.deregister)
        app.router.add_get("/v1/agent/service/{id}", self.service)
        app.router.add_put("/v1/agent/check/{op:pass|warn|fail}/{id}", self.ttl_update)
        app.router.add_get("/v1/health/service/{name}", self.health)
        app.router.add_put("/v1/session/create", self.session_create)
        app.router.add_put("/v1/session/renew/{id}", self.session_renew)
        app.router.add_put("/v1/session/destroy/{id}", self.session_destroy)
        app.router.add_get("/v1/kv/{key:.+}", self.kv_get)
        app.router.add_put("/v1/kv/{key:.+}", self.kv_put)
        return app


@asynccontextmanager
async def running_consul() -> AsyncIterator[ConsulDouble]:
    double = ConsulDouble()
    async with served(double.app()) as double.url:
        reaper = asyncio.create_task(double.reap())
        try:
            yield double
        finally:
            reaper.cancel()
            for probe in double.probes:
                probe.cancel()
