"""HCL2 jobspec -> Nomad's job JSON, as ``/v1/jobs/parse`` returns it (the fields the Nomad
double schedules on): variables resolved, durations in nanoseconds, constraints as
``{LTarget, RTarget, Operand}``, ports as ``ReservedPorts``/``DynamicPorts``, host volumes.
Runtime interpolations (``${node.class}``, ``${attr.…}``, ``${NOMAD_PORT_x}``) are kept,
as Nomad keeps them for the client to fill in.

After https://developer.hashicorp.com/nomad/docs/job-specification and
https://developer.hashicorp.com/nomad/api-docs/json-jobs.
"""

from __future__ import annotations

import re
from typing import Any

import hcl2
from aiohttp import web

OPTIONS = hcl2.SerializationOptions(
    strip_string_quotes=True, with_comments=False, explicit_blocks=False
)
WHOLE_VAR = re.compile(r"^\$\{var\.([A-Za-z_][\w-]*)\}$")
INNER_VAR = re.compile(r"\$\{var\.([A-Za-z_][\w-]*)\}")
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)$")
NANOS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
DEFAULT_KILL_TIMEOUT_NS = 5 * 10**9  # Nomad's default kill_timeout


def nanoseconds(value: str) -> int:
    match = DURATION.match(value)
    if not match:
        raise web.HTTPBadRequest(text=f"invalid duration {value!r}")
    return int(float(match.group(1)) * NANOS[match.group(2)])


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


def parse(job_hcl: str, variables_hcl: str) -> dict[str, Any]:
    try:
        spec = hcl2.loads(job_hcl, serialization_options=OPTIONS)
        assigned = hcl2.loads(variables_hcl or "", serialization_options=OPTIONS)
    except Exception as exc:
        raise web.HTTPBadRequest(text=f"error parsing: {exc}") from None
    declared = {name: b for v in spec.get("variable", []) for name, b in v.items()}
    values = {name: b.get("default") for name, b in declared.items()}
    for name, value in assigned.items():
        if name not in values:
            raise web.HTTPBadRequest(
                text=f'Undefined variable: A variable named "{name}" was assigned on the '
                "command line, but the root module does not declare a variable of that name."
            )
        values[name] = value
    for name, body in declared.items():
        if "default" not in body and name not in assigned:
            raise web.HTTPBadRequest(
                text=f'No value for required variable: The root module input variable "{name}" '
                "is not set, and has no default value."
            )
    [named] = spec["job"]
    [(job_id, job)] = named.items()
    return job_json(job_id, resolve(job, values))


def blocks(body: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return list(body.get(kind) or [])


def labelled(body: dict[str, Any], kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, inner) for item in blocks(body, kind) for name, inner in item.items()]


def constraints(body: dict[str, Any]) -> list[dict[str, str]]:
    return [
        {
            "LTarget": str(c.get("attribute", "")),
            "RTarget": str(c.get("value", "")),
            "Operand": str(c.get("operator", "=")),
        }
        for c in blocks(body, "constraint")
    ]


def network(body: dict[str, Any]) -> dict[str, Any]:
    reserved, dynamic = [], []
    for item in blocks(body, "network"):
        for label, port in labelled(item, "port"):
            entry = {"Label": label, "Value": int(port.get("static", 0)), "To": port.get("to", 0)}
            (reserved if entry["Value"] else dynamic).append(entry)
    mode = next((n.get("mode", "host") for n in blocks(body, "network")), "host")
    return {"Mode": mode, "ReservedPorts": reserved, "DynamicPorts": dynamic}


def task_json(name: str, task: dict[str, Any]) -> dict[str, Any]:
    resources = (task.get("resources") or [{}])[0]
    return {
        "Name": name,
        "Driver": task["driver"],
        "User": task.get("user", ""),
        "Config": (task.get("config") or [{}])[0],
        "Env": (task.get("env") or [{}])[0],
        "KillSignal": task.get("kill_signal", ""),
        "KillTimeout": nanoseconds(task["kill_timeout"])
        if "kill_timeout" in task
        else DEFAULT_KILL_TIMEOUT_NS,
        "Constraints": constraints(task),
        "Templates": [
            {"DestPath": t.get("destination", ""), "EmbeddedTmpl": t.get("data", "")}
            for t in blocks(task, "template")
        ],
        "Resources": {"CPU": resources.get("cpu", 100), "MemoryMB": resources.get("memory", 300)},
    }


def job_json(job_id: str, job: dict[str, Any]) -> dict[str, Any]:
    groups = []
    for name, group in labelled(job, "group"):
        groups.append(
            {
                "Name": name,
                "Count": int(group.get("count", 1)),
                "Constraints": constraints(group),
                "Networks": [network(group)],
                "Volumes": {
                    label: {
                        "Name": label,
                        "Type": v.get("type", ""),
                        "Source": v.get("source", ""),
                        "ReadOnly": bool(v.get("read_only", False)),
                    }
                    for label, v in labelled(group, "volume")
                },
                "Tasks": [task_json(n, t) for n, t in labelled(group, "task")],
            }
        )
    return {
        "ID": job_id,
        "Name": job_id,
        "Type": job.get("type", "service"),
        "Datacenters": job.get("datacenters", ["*"]),
        "Constraints": constraints(job),
        "TaskGroups": groups,
    }
