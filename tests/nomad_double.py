"""A small in-process Nomad for the tests: the job endpoints ``hodei nomad`` uses, after
https://developer.hashicorp.com/nomad/api-docs/jobs.

- ``/v1/jobs/parse`` turns HCL2 into the job's JSON with the given ``Variables``: defaults
  from the ``variable`` blocks, ``${var.x}`` resolved; an assigned variable that is not
  declared is refused, as Nomad does. Runtime interpolations (``${node.class}``) are kept.
- ``/v1/job/{id}/plan`` and ``POST /v1/job/{id}`` place task groups on the double's nodes
  by datacenter, driver, CPU and memory (a system job: one per feasible node), answering
  ``Diff``, ``Annotations.DesiredTGUpdates`` and ``FailedTGAllocs`` like Nomad's scheduler.
- Evaluations, job status and allocations can be read back.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import hcl2
from aiohttp import web
from doubles import header_recorder, served

OPTIONS = hcl2.SerializationOptions(
    strip_string_quotes=True, with_comments=False, explicit_blocks=False
)
WHOLE_VAR = re.compile(r"^\$\{var\.([A-Za-z_][\w-]*)\}$")
INNER_VAR = re.compile(r"\$\{var\.([A-Za-z_][\w-]*)\}")


@dataclass
class Node:
    name: str
    datacenter: str = "dc1"
    drivers: tuple[str, ...] = ("docker", "raw_exec")
    cpu: int = 4000
    memory_mb: int = 8192
    used_cpu: int = 0
    used_memory: int = 0


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

    # -- parse -------------------------------------------------------------------------
    async def parse(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.parsed_variables.append(body.get("Variables", ""))
        try:
            spec = hcl2.loads(body["JobHCL"], serialization_options=OPTIONS)
            assigned = hcl2.loads(body.get("Variables") or "", serialization_options=OPTIONS)
        except Exception as exc:
            raise web.HTTPBadRequest(text=f"error parsing: {exc}") from None
        values = {name: b.get("default") for v in spec.get("variable", []) for name, b in v.items()}
        for name, value in assigned.items():
            if name not in values:
                raise web.HTTPBadRequest(
                    text=f'Undefined variable: A variable named "{name}" was assigned on the '
                    "command line, but the root module does not declare a variable of that name."
                )
            values[name] = value
        [named] = spec["job"]
        [(job_id, job)] = named.items()
        return web.json_response(self.job_json(job_id, resolve(job, values)))

    def job_json(self, job_id: str, job: dict[str, Any]) -> dict[str, Any]:
        groups = []
        for named in job.get("group", []):
            for name, group in named.items():
                tasks = []
                for task_named in group.get("task", []):
                    for task_name, task in task_named.items():
                        resources = (task.get("resources") or [{}])[0]
                        tasks.append(
                            {
                                "Name": task_name,
                                "Driver": task["driver"],
                                "Config": (task.get("config") or [{}])[0],
                                "Env": (task.get("env") or [{}])[0],
                                "KillSignal": task.get("kill_signal", "SIGINT"),
                                "Resources": {
                                    "CPU": resources.get("cpu", 100),
                                    "MemoryMB": resources.get("memory", 300),
                                },
                            }
                        )
                groups.append({"Name": name, "Count": int(group.get("count", 1)), "Tasks": tasks})
        return {
            "ID": job_id,
            "Name": job_id,
            "Type": job.get("type", "service"),
            "Datacenters": job.get("datacenters", ["*"]),
            "TaskGroups": groups,
        }

    # -- scheduling --------------------------------------------------------------------
    def place(self, job: dict[str, Any], commit: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """(DesiredTGUpdates, FailedTGAllocs) for the job on the current nodes."""
        updates: dict[str, Any] = {}
        failed: dict[str, Any] = {}
        datacenters = job["Datacenters"]
        in_dc = [n for n in self.nodes if "*" in datacenters or n.datacenter in datacenters]
        for group in job["TaskGroups"]:
            cpu = sum(t["Resources"]["CPU"] for t in group["Tasks"])
            memory = sum(t["Resources"]["MemoryMB"] for t in group["Tasks"])
            drivers = {t["Driver"] for t in group["Tasks"]}
            metric: dict[str, Any] = {
                "NodesEvaluated": len(in_dc),
                "NodesFiltered": 0,
                "NodesAvailable": {},
                "ConstraintFiltered": {},
                "DimensionExhausted": {},
                "CoalescedFailures": 0,
            }
            for node in in_dc:
                metric["NodesAvailable"][node.datacenter] = (
                    metric["NodesAvailable"].get(node.datacenter, 0) + 1
                )
            feasible = []
            for node in in_dc:
                missing = drivers - set(node.drivers)
                if missing:
                    metric["NodesFiltered"] += 1
                    reason = f"missing drivers: {', '.join(sorted(missing))}"
                    metric["ConstraintFiltered"][reason] = (
                        metric["ConstraintFiltered"].get(reason, 0) + 1
                    )
                else:
                    feasible.append(node)
            wanted = len(feasible) if job["Type"] == "system" else group["Count"]
            placed = 0
            candidates = feasible if job["Type"] == "system" else feasible * wanted
            for node in candidates:
                if placed == wanted:
                    break
                dimension = (
                    "memory"
                    if node.memory_mb - node.used_memory < memory
                    else "cpu"
                    if node.cpu - node.used_cpu < cpu
                    else ""
                )
                if dimension:
                    metric["DimensionExhausted"][dimension] = (
                        metric["DimensionExhausted"].get(dimension, 0) + 1
                    )
                    continue
                placed += 1
                if commit:
                    node.used_cpu += cpu
                    node.used_memory += memory
                    self.allocations.setdefault(job["ID"], []).append(
                        {
                            "ID": str(uuid.uuid4()),
                            "TaskGroup": group["Name"],
                            "NodeName": node.name,
                            "ClientStatus": "running",
                        }
                    )
            updates[group["Name"]] = {"Place": placed, "Ignore": 0, "Stop": 0}
            if placed < max(wanted, 1):
                metric["CoalescedFailures"] = max(0, max(wanted, 1) - placed - 1)
                failed[group["Name"]] = metric
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
        self.allocations.pop(job["ID"], None)
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
        return web.json_response(self.allocations.get(request.match_info["id"], []))

    def app(self) -> web.Application:
        app = web.Application(middlewares=[header_recorder("X-Nomad-Token", self.tokens)])
        app.router.add_route("*", "/v1/jobs/parse", self.parse)
        app.router.add_post("/v1/job/{id}/plan", self.plan)
        app.router.add_post("/v1/job/{id}", self.register)
        app.router.add_get("/v1/job/{id}", self.job)
        app.router.add_get("/v1/job/{id}/allocations", self.job_allocations)
        app.router.add_get("/v1/evaluation/{id}", self.evaluation)
        return app


def resolve(value: Any, variables: dict[str, Any]) -> Any:
    """``${var.x}`` references replaced by their values; other expressions left alone."""
    if isinstance(value, dict):
        return {k: resolve(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, variables) for v in value]
    if isinstance(value, str):
        for name in INNER_VAR.findall(value):
            if name not in variables:
                raise web.HTTPBadRequest(
                    text=f'Unknown variable: There is no variable named "{name}".'
                )
        whole = WHOLE_VAR.match(value)
        if whole:
            return variables[whole.group(1)]
        return INNER_VAR.sub(lambda m: str(variables[m.group(1)]), value)
    return value


@asynccontextmanager
async def running_nomad(nodes: list[Node]) -> AsyncIterator[NomadDouble]:
    double = NomadDouble(nodes=nodes)
    async with served(double.app()) as double.url:
        yield double
