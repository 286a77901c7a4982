"""A small in-process Nomad for the tests: the job endpoints ``hodei nomad`` uses, after
https://developer.hashicorp.com/nomad/api-docs/jobs and Nomad's scheduler
(scheduler/feasible.go, scheduler/rank.go, nomad/structs/network.go).

- ``/v1/jobs/parse`` turns HCL2 into the job's JSON with the given ``Variables``
  (nomad_jobspec.py); an assigned variable that is not declared is refused, as Nomad does.
- ``/v1/job/{id}/plan`` and ``POST /v1/job/{id}`` place task groups on the double's nodes
  as Nomad's scheduler decides feasibility: datacenter, drivers (a driver is there when the
  node has the ``driver.<name>`` attribute — raw_exec only when the client enabled it),
  ``constraint`` blocks at job, group and task level evaluated against the node's
  attributes, meta, class and name (``=``, ``!=``, ``regexp``, ``is_set``, ``is_not_set``,
  ``distinct_hosts``), host volumes; then resources: CPU, memory and static ports, a port
  another allocation holds on that node being a "reserved port collision". The answer has
  ``Diff``, ``Annotations.DesiredTGUpdates`` and ``FailedTGAllocs`` with Nomad's wording
  (``ConstraintFiltered`` keyed by "missing drivers", "missing compatible host volumes" or
  the constraint as "LTarget Operand RTarget"; ``DimensionExhausted`` by "cpu", "memory" or
  "network: reserved port collision <label>=<port>").
- Evaluations, job status and allocations can be read back.
- The ``namespace`` and ``region`` query parameters of every request are kept
  (``scopes``), as Nomad reads them.

Client settings that are not node attributes (``max_kill_timeout``) are not visible
through Nomad's API; ``hodei nomad`` takes the clients' value as a flag.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from doubles import header_recorder, served
from nomad_jobspec import parse

TARGET = re.compile(r"^\$\{([^}]+)\}$")


def default_attributes() -> dict[str, str]:
    return {
        "driver.docker": "true",
        "driver.docker.volumes.enabled": "true",
        "driver.raw_exec": "true",
        "cpu.frequency": "2400",
        "kernel.name": "linux",
    }


@dataclass
class Node:
    name: str
    datacenter: str = "dc1"
    node_class: str = ""
    cpu: int = 4000
    memory_mb: int = 8192
    attributes: dict[str, str] = field(default_factory=default_attributes)
    meta: dict[str, str] = field(default_factory=dict)
    host_volumes: set[str] = field(default_factory=lambda: {"hodei-redis"})
    used_cpu: int = 0
    used_memory: int = 0
    used_ports: set[int] = field(default_factory=set)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def drivers(self) -> set[str]:
        prefix = "driver."
        return {
            k[len(prefix) :]
            for k, v in self.attributes.items()
            if k.startswith(prefix) and k.count(".") == 1 and v in ("1", "true")
        }

    def target(self, raw: str) -> tuple[str, bool]:
        """A constraint target on this node: (value, found)."""
        match = TARGET.match(raw)
        if not match:
            return raw, True
        name = match.group(1)
        known = {
            "node.class": self.node_class,
            "node.datacenter": self.datacenter,
            "node.unique.name": self.name,
            "node.unique.id": self.id,
        }
        if name in known:
            return known[name], True
        for prefix, values in (("attr.", self.attributes), ("meta.", self.meta)):
            if name.startswith(prefix):
                key = name[len(prefix) :]
                return values.get(key, ""), key in values
        return "", False


def satisfied(node: Node, constraint: dict[str, str], placed_here: bool) -> bool:
    operand = constraint["Operand"]
    if operand == "distinct_hosts":
        return not placed_here or constraint["RTarget"] in ("false", "0")
    left, found = node.target(constraint["LTarget"])
    right, _ = node.target(constraint["RTarget"])
    if operand in ("=", "==", "is"):
        return found and left == right
    if operand in ("!=", "not"):
        return left != right
    if operand == "regexp":
        return found and re.search(right, left) is not None
    if operand == "is_set":
        return found
    if operand == "is_not_set":
        return not found
    raise web.HTTPBadRequest(text=f"unsupported constraint operator {operand!r} in the double")


def new_metric(nodes: list[Node]) -> dict[str, Any]:
    available: dict[str, int] = {}
    for node in nodes:
        available[node.datacenter] = available.get(node.datacenter, 0) + 1
    return {
        "NodesEvaluated": len(nodes),
        "NodesFiltered": 0,
        "NodesExhausted": 0,
        "NodesAvailable": available,
        "ConstraintFiltered": {},
        "DimensionExhausted": {},
        "CoalescedFailures": 0,
    }


def describe(constraint: dict[str, str]) -> str:
    return f"{constraint['LTarget']} {constraint['Operand']} {constraint['RTarget']}"


@dataclass
class NomadDouble:
    nodes: list[Node] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)
    allocations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    parsed_variables: list[str] = field(default_factory=list)
    index: int = 100
    url: str = ""
    placing: list[dict[str, Any]] = field(default_factory=list)
    scopes: list[tuple[str, str]] = field(default_factory=list)

    async def parse(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.parsed_variables.append(body.get("Variables", ""))
        return web.json_response(parse(body["JobHCL"], body.get("Variables", "")))

    # -- scheduling --------------------------------------------------------------------
    def feasible(
        self, job: dict[str, Any], group: dict[str, Any], node: Node, metric: dict[str, Any]
    ) -> bool:
        """Nomad's feasibility checks, in its order; a failure is counted as it counts it."""
        placed_here = any(a["NodeName"] == node.name and a["TaskGroup"] == group["Name"]
                          for a in self.placing)  # fmt: skip
        reason = ""
        if {t["Driver"] for t in group["Tasks"]} - node.drivers:
            reason = "missing drivers"
        elif any(v["Type"] == "host" and v["Source"] not in node.host_volumes
                 for v in group["Volumes"].values()):  # fmt: skip
            reason = "missing compatible host volumes"
        else:
            every = job["Constraints"] + group["Constraints"]
            every += [c for t in group["Tasks"] for c in t["Constraints"]]
            failed = [c for c in every if not satisfied(node, c, placed_here)]
            reason = describe(failed[0]) if failed else ""
        if reason:
            metric["NodesFiltered"] += 1
            metric["ConstraintFiltered"][reason] = metric["ConstraintFiltered"].get(reason, 0) + 1
        return not reason

    def fits(self, group: dict[str, Any], node: Node, metric: dict[str, Any]) -> bool:
        cpu = sum(t["Resources"]["CPU"] for t in group["Tasks"])
        memory = sum(t["Resources"]["MemoryMB"] for t in group["Tasks"])
        ports = [p for n in group["Networks"] for p in n["ReservedPorts"]]
        taken = [p for p in ports if p["Value"] in node.used_ports]
        dimension = ""
        if node.cpu - node.used_cpu < cpu:
            dimension = "cpu"
        elif node.memory_mb - node.used_memory < memory:
            dimension = "memory"
        elif taken:
            dimension = f"network: reserved port collision {taken[0]['Label']}={taken[0]['Value']}"
        if dimension:
            exhausted = metric["DimensionExhausted"]
            exhausted[dimension] = exhausted.get(dimension, 0) + 1
            metric["NodesExhausted"] += 1
            return False
        node.used_cpu += cpu
        node.used_memory += memory
        node.used_ports |= {p["Value"] for p in ports}
        self.placing.append(
            {
                "ID": str(uuid.uuid4()),
                "TaskGroup": group["Name"],
                "NodeName": node.name,
                "ClientStatus": "running",
                "_resources": (node, cpu, memory, {p["Value"] for p in ports}),
            }
        )
        return True

    def release(self, job_id: str) -> None:
        for alloc in self.allocations.pop(job_id, []):
            node, cpu, memory, ports = alloc["_resources"]
            node.used_cpu -= cpu
            node.used_memory -= memory
            node.used_ports -= ports

    def place_service(
        self, job: dict[str, Any], group: dict[str, Any], nodes: list[Node]
    ) -> tuple[int, dict[str, Any] | None]:
        """One selection per wanted allocation (job anti-affinity spreads them); the first
        failure's metrics are reported, later ones coalesced into it."""
        placed, failure = 0, None
        for attempt in range(group["Count"]):
            metric = new_metric(nodes)
            order = nodes[attempt % len(nodes) :] + nodes[: attempt % len(nodes)] if nodes else []
            if any(self.feasible(job, group, n, metric) and self.fits(group, n, metric)
                   for n in order):  # fmt: skip
                placed += 1
            elif failure is None:
                failure = metric
            else:
                failure["CoalescedFailures"] += 1
        return placed, failure

    def place_system(
        self, job: dict[str, Any], group: dict[str, Any], nodes: list[Node]
    ) -> tuple[int, dict[str, Any] | None]:
        """One allocation per feasible node. As in Nomad's system scheduler, nodes filtered
        by constraints are not failures — unless no node at all could run the group."""
        placed, failure, filtered = 0, None, new_metric([])
        for node in nodes:
            metric = new_metric(nodes)
            if not self.feasible(job, group, node, metric):
                filtered["NodesEvaluated"] += 1
                filtered["NodesFiltered"] += 1
                for reason, n in metric["ConstraintFiltered"].items():
                    counts = filtered["ConstraintFiltered"]
                    counts[reason] = counts.get(reason, 0) + n
                continue
            if self.fits(group, node, metric):
                placed += 1
            elif failure is None:
                failure = metric
            else:
                failure["CoalescedFailures"] += 1
        if failure is None and not placed and filtered["NodesFiltered"]:
            filtered["NodesAvailable"] = new_metric(nodes)["NodesAvailable"]
            failure = filtered
        return placed, failure

    def place(self, job: dict[str, Any], commit: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """(DesiredTGUpdates, FailedTGAllocs) for the job on the current nodes."""
        usage = [(n.used_cpu, n.used_memory, set(n.used_ports)) for n in self.nodes]
        previous = self.allocations.get(job["ID"], [])
        self.release(job["ID"])
        self.placing = []
        updates: dict[str, Any] = {}
        failed: dict[str, Any] = {}
        datacenters = job["Datacenters"]
        nodes = [n for n in self.nodes if "*" in datacenters or n.datacenter in datacenters]
        for group in job["TaskGroups"]:
            system = job["Type"] == "system"
            placer = self.place_system if system else self.place_service
            placed, failure = placer(job, group, nodes)
            updates[group["Name"]] = {"Place": placed, "Ignore": 0, "Stop": 0}
            if failure is not None:
                failed[group["Name"]] = failure
        if commit:
            self.allocations[job["ID"]] = self.placing
        else:  # a plan changes nothing
            for node, (cpu, memory, ports) in zip(self.nodes, usage, strict=True):
                node.used_cpu, node.used_memory, node.used_ports = cpu, memory, ports
            if previous:
                self.allocations[job["ID"]] = previous
        return updates, failed

    async def plan(self, request: web.Request) -> web.Response:
        body = await request.json()
        job = body["Job"]
        if job["ID"] != request.match_info["id"]:
            raise web.HTTPBadRequest(text="Job ID does not match")
        known = self.jobs.get(job["ID"])
        diff = "Added" if known is None else ("None" if known["spec"] == job else "Edited")
        updates, failed = self.place(job, commit=False)
        return web.json_response(
            {
                "Diff": {"Type": diff, "ID": job["ID"]} if body.get("Diff") else None,
                "Annotations": {"DesiredTGUpdates": updates},
                "FailedTGAllocs": failed or None,
                "JobModifyIndex": known["index"] if known else 0,
            }
        )

    async def register(self, request: web.Request) -> web.Response:
        job = (await request.json())["Job"]
        self.index += 1
        _, failed = self.place(job, commit=True)
        eval_id = str(uuid.uuid4())
        self.evaluations[eval_id] = {
            "ID": eval_id,
            "JobID": job["ID"],
            "Status": "complete",
            "FailedTGAllocs": failed or None,
            "BlockedEval": str(uuid.uuid4()) if failed else "",
        }
        status = "running" if self.allocations.get(job["ID"]) else "pending"
        self.jobs[job["ID"]] = {"spec": job, "index": self.index, "status": status}
        return web.json_response({"EvalID": eval_id, "JobModifyIndex": self.index})

    async def evaluation(self, request: web.Request) -> web.Response:
        found = self.evaluations.get(request.match_info["id"])
        if found is None:
            raise web.HTTPNotFound(text="eval not found")
        return web.json_response(found)

    async def job(self, request: web.Request) -> web.Response:
        known = self.jobs.get(request.match_info["id"])
        if known is None:
            raise web.HTTPNotFound(text="job not found")
        spec = known["spec"]
        return web.json_response(spec | {"Status": known["status"], "Version": known["index"]})

    async def job_allocations(self, request: web.Request) -> web.Response:
        allocs = self.allocations.get(request.match_info["id"], [])
        return web.json_response([{k: v for k, v in a.items() if k[0] != "_"} for a in allocs])

    @web.middleware
    async def scope(self, request: web.Request, handler: Any) -> web.StreamResponse:
        query = request.query
        self.scopes.append((query.get("namespace", ""), query.get("region", "")))
        response: web.StreamResponse = await handler(request)
        return response

    def app(self) -> web.Application:
        recorder = header_recorder("X-Nomad-Token", self.tokens)
        app = web.Application(middlewares=[recorder, self.scope])
        app.router.add_route("*", "/v1/jobs/parse", self.parse)
        app.router.add_post("/v1/job/{id}/plan", self.plan)
        app.router.add_post("/v1/job/{id}", self.register)
        app.router.add_get("/v1/job/{id}", self.job)
        app.router.add_get("/v1/job/{id}/allocations", self.job_allocations)
        app.router.add_get("/v1/evaluation/{id}", self.evaluation)
        return app


@asynccontextmanager
async def running_nomad(nodes: list[Node], tls: Any = None) -> AsyncIterator[NomadDouble]:
    double = NomadDouble(nodes=nodes)
    async with served(double.app(), tls) as double.url:
        yield double
