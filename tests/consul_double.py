"""A small in-process Consul for the tests: the HTTP API Hodei uses, with Consul's documented
behaviour (https://developer.hashicorp.com/consul/api-docs), timings included.

- Service registration with explicit ``CheckID``s; checks start ``critical``. TTL checks
  are updated by ``/v1/agent/check/{pass,warn,fail}``, whose ``note`` lands in ``Output``,
  and turn critical with "TTL expired" when not updated in time; an update for a check the
  agent does not know is a 404 ("Unknown check ID", Consul >= 1.11). HTTP checks (2xx
  passing, 429 warning, else critical) and gRPC health checks (SERVING passing) are really
  probed, first at registration, then every ``Interval``, each within its ``Timeout``; TCP
  and script checks are not run (``set_status`` plays them).
- Two views, as in Consul: the local agent's (``/v1/agent/...``, and ``checks`` here) sees
  every update at once; the catalog (``/v1/health/service``, what the servers' watch and
  the Consul UI read) gets a status change at once but an output-only change only after
  ``output_sync_s`` — Consul's ``check_update_interval``, 5 minutes by default
  (hashicorp/consul#9113) — and only then does the index move.
- ``DeregisterCriticalServiceAfter`` removes a service critical for that long, never less
  than ``reap_minimum_s`` (a minute in Consul), by a sweep every ``reap_interval_s`` (30 s
  in Consul); tests may lower both to stay quick.
- ``/v1/health/service/{name}`` with ``?passing`` and blocking queries: ``X-Consul-Index``
  on every answer, ``?index=&wait=`` blocks until something changes or the wait ends.
- Sessions with a TTL between 10 s and 24 h, invalidated ``SESSION_TTL_MULTIPLIER`` (2) x
  TTL after their last renewal, as Consul's leader does (agent/consul/session_ttl.go);
  lock-delay (default 15 s, at most 60 s) after an invalidation; behavior ``release``; KV
  with ``?acquire``/``?release``, ``LockIndex``, and blocking reads of one key that wake
  when that key changes.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from consul_sessions import SessionsAndKV, folded, seconds
from doubles import header_recorder, served
from grpc_health.v1 import health_pb2, health_pb2_grpc

NODE = {"Node": "node-1", "Address": "127.0.0.1", "Datacenter": "dc1"}


class ConsulDouble(SessionsAndKV):
    def __init__(self, output_sync_s: float = 300.0) -> None:
        self.index = 10
        self.output_sync_s = output_sync_s
        self.reap_minimum_s = 60.0
        self.reap_interval_s = 30.0
        self.services: dict[str, dict[str, Any]] = {}
        self.checks: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.kv: dict[str, dict[str, Any]] = {}
        self.lock_delays: dict[str, float] = {}
        self.tokens: list[str] = []
        self.acquires: list[tuple[str, bool]] = []  # (session name, granted) per attempt
        self.leader = "127.0.0.1:8300"  # "" plays a cluster without a leader
        # Checks whose updates get lost on the way (a partition between agent and Consul).
        self.unreachable: set[str] = set()
        # Checks whose updates Consul answers this many seconds late (an overloaded agent).
        self.slow: dict[str, float] = {}
        self.probes: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Condition()
        self.url = ""

    # -- bookkeeping -------------------------------------------------------------------
    async def bump(self) -> None:
        self.index += 1
        async with self.changed:
            self.changed.notify_all()

    async def blocking(self, request: web.Request, current: Any = None) -> None:
        """Wait as a blocking query does: until the watched index (``current()``, else the
        global one) passes the caller's ``index``, or ``wait`` runs out."""
        index_of = current or (lambda: self.index)
        wanted = int(request.query.get("index", "0") or 0)
        if wanted <= 0 or wanted < index_of():
            return
        wait = min(seconds(request.query.get("wait"), 300.0), 600.0)
        deadline = time.monotonic() + wait
        async with self.changed:
            while index_of() <= wanted:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    await asyncio.wait_for(self.changed.wait(), remaining)
                except TimeoutError:
                    return

    def answer(self, body: Any, status: int = 200, index: int | None = None) -> web.Response:
        headers = {"X-Consul-Index": str(self.index if index is None else index)}
        return web.json_response(body, status=status, headers=headers)

    async def set_status(self, check_id: str, status: str, output: str = "") -> None:
        check = self.checks[check_id]
        changed = check["Status"] != status
        check["Status"], check["Output"] = status, output
        if changed:
            check["critical_since"] = time.monotonic() if status == "critical" else None
            check["synced_output"], check["sync_due"] = output, None
            await self.bump()
        elif output != check["synced_output"] and check["sync_due"] is None:
            check["sync_due"] = time.monotonic() + self.output_sync_s

    # -- the agent's service and check endpoints ----------------------------------------
    async def register(self, request: web.Request) -> web.Response:
        body = folded(await request.json())
        service_id = body.get("id") or body["name"]
        raw_checks = body.get("checks") or ([body["check"]] if body.get("check") else [])
        count = len(raw_checks)
        checks = [self.new_check(body, service_id, r, n, count) for n, r in enumerate(raw_checks)]
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

    def new_check(
        self, service: dict[str, Any], service_id: str, raw: dict[str, Any], n: int, count: int
    ) -> dict[str, Any]:
        kind = next((k for k in ("ttl", "http", "grpc", "tcp", "args") if raw.get(k)), None)
        if kind is None:
            raise web.HTTPBadRequest(text="Invalid check: TTL, HTTP, GRPC, TCP or Args needed")
        if kind != "ttl" and not raw.get("interval"):
            raise web.HTTPBadRequest(text="Check types that require an interval need one")
        check_id = raw.get("checkid") or f"service:{service_id}" + (f":{n + 1}" * (count > 1))
        status = raw.get("status") or "critical"
        now = time.monotonic()
        return {
            "CheckID": check_id,
            "Name": raw.get("name") or f"Service '{service['name']}' check",
            "ServiceID": service_id,
            "ServiceName": service["name"],
            "Type": kind,
            "Status": status,
            "Notes": raw.get("notes", ""),
            "Output": "",
            "Definition": raw,
            "ttl": seconds(raw.get("ttl")),
            "expires": now + seconds(raw.get("ttl")),
            "deregister_after": seconds(raw.get("deregistercriticalserviceafter")),
            "critical_since": now if status == "critical" else None,
            "synced_output": "",
            "sync_due": None,
            "next_probe": 0.0,
            "probing": False,
        }

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

    async def agent_checks(self, request: web.Request) -> web.Response:
        public = ("CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "ServiceName")
        return self.answer({i: {k: c[k] for k in public} for i, c in self.checks.items()})

    async def ttl_update(self, request: web.Request) -> web.Response:
        check_id = request.match_info["id"]
        check = self.checks.get(check_id)
        if check is None:
            raise web.HTTPNotFound(
                text=f'Unknown check ID "{check_id}". Ensure that the check ID is passed, '
                "not the check name."
            )
        if check["Type"] != "ttl":
            raise web.HTTPInternalServerError(
                text=f'CheckID "{check_id}" does not have associated TTL'
            )
        if check_id in self.unreachable:
            return web.Response()
        if check_id in self.slow:
            await asyncio.sleep(self.slow[check_id])
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
                public = ("CheckID", "Name", "Status", "Notes", "ServiceID", "Type")
                shown = {k: c[k] for k in public} | {"Output": c["synced_output"]}
                checks.append(shown | {"ServiceName": service["Service"]})
        return {"Node": dict(NODE), "Service": dict(service), "Checks": checks}

    async def health(self, request: web.Request) -> web.Response:
        await self.blocking(request)
        name = request.match_info["name"]
        entries = [self.entry(s) for s in self.services.values() if s["Service"] == name]
        if "passing" in request.query and request.query["passing"] not in ("false", "0"):
            entries = [e for e in entries if all(c["Status"] == "passing" for c in e["Checks"])]
        return self.answer(entries)

    async def status_leader(self, request: web.Request) -> web.Response:
        return web.json_response(self.leader)

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

    async def tick(self, now: float, sweep: bool) -> None:
        for check_id, check in list(self.checks.items()):
            probed = check["Type"] in ("http", "grpc") and not check["probing"]
            if probed and now >= check["next_probe"]:
                check["probing"] = True
                check["next_probe"] = now + seconds(check["Definition"]["interval"])
                self.probes.add(asyncio.create_task(self.probe(check_id, check)))
                self.probes = {t for t in self.probes if not t.done()}
            if check["Type"] == "ttl" and check["Status"] != "critical" and now > check["expires"]:
                await self.set_status(check_id, "critical", "TTL expired")
            if check["sync_due"] is not None and now >= check["sync_due"]:
                check["synced_output"], check["sync_due"] = check["Output"], None
                await self.bump()
            since, after = check["critical_since"], check["deregister_after"]
            reaped = since is not None and after and now - since > max(after, self.reap_minimum_s)
            if sweep and reaped:
                await self.remove_service(check["ServiceID"])
        for session_id in self.expire_sessions(now):
            await self.invalidate(session_id)

    async def run(self) -> None:
        last_sweep = time.monotonic()
        while True:
            now = time.monotonic()
            sweep = now - last_sweep >= self.reap_interval_s
            if sweep:
                last_sweep = now
            await self.tick(now, sweep)
            await asyncio.sleep(0.05)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[header_recorder("X-Consul-Token", self.tokens)])
        app.router.add_put("/v1/agent/service/register", self.register)
        app.router.add_put("/v1/agent/service/deregister/{id}", self.deregister)
        app.router.add_get("/v1/agent/service/{id}", self.service)
        app.router.add_get("/v1/agent/checks", self.agent_checks)
        app.router.add_put("/v1/agent/check/{op:pass|warn|fail}/{id}", self.ttl_update)
        app.router.add_get("/v1/health/service/{name}", self.health)
        app.router.add_get("/v1/status/leader", self.status_leader)
        app.router.add_put("/v1/session/create", self.session_create)
        app.router.add_put("/v1/session/renew/{id}", self.session_renew)
        app.router.add_put("/v1/session/destroy/{id}", self.session_destroy)
        app.router.add_get("/v1/kv/{key:.+}", self.kv_get)
        app.router.add_put("/v1/kv/{key:.+}", self.kv_put)
        return app


@asynccontextmanager
async def running_consul(
    tls: ssl.SSLContext | None = None, output_sync_s: float = 300.0
) -> AsyncIterator[ConsulDouble]:
    double = ConsulDouble(output_sync_s)
    async with served(double.app(), tls) as double.url:
        clock = asyncio.create_task(double.run())
        try:
            yield double
        finally:
            clock.cancel()
            for probe in double.probes:
                probe.cancel()
