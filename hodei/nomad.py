"""``hodei nomad plan|deploy|status``: the jobspecs of ``jobspecs/`` through Nomad's API
(python-nomad). Nomad itself parses the HCL2 (``/v1/jobs/parse`` with the variables), then
plans or registers the job; placement failures are spelled out group by group, with what
to change on the clients, and a task whose drain cannot fit the time Nomad gives it before
SIGKILL (``kill_timeout``, capped by the clients' ``max_kill_timeout``) is a failure too.

The standard variables are honoured as the ``nomad`` CLI honours them
(https://developer.hashicorp.com/nomad/docs/commands#environment-variables):
``NOMAD_ADDR``, ``NOMAD_TOKEN``, ``NOMAD_NAMESPACE``, ``NOMAD_REGION``, ``NOMAD_CACERT``,
``NOMAD_CAPATH``, ``NOMAD_CLIENT_CERT``, ``NOMAD_CLIENT_KEY`` and ``NOMAD_SKIP_VERIFY``
(python-nomad alone would not verify TLS at all).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hodei.errors import ConfigError, NomadError

JOBS = {
    "redis": "redis.nomad.hcl",
    "server": "hodei-server.nomad.hcl",
    "gateway": "hodei-gateway.nomad.hcl",
    "agent": "hodei-agent.nomad.hcl",
    "agent-raw-exec": "hodei-agent-raw-exec.nomad.hcl",
}
# Deploy order: what others need comes first.
ORDER = ("redis", "server", "gateway", "agent")
HCL_LITERAL = re.compile(r"^(\[.*\]|\{.*\}|-?\d+(\.\d+)?|true|false)$", re.S)
# Nomad's defaults: a task's kill_timeout, and the clients' cap on it (client.max_kill_timeout).
DEFAULT_KILL_TIMEOUT_S = 5.0
DEFAULT_MAX_KILL_TIMEOUT_S = 30.0
# What a client needs for the usual reasons a node is filtered or exhausted.
HINTS = {
    "missing drivers": "the task driver is not enabled on those clients (raw_exec is off by "
    'default: plugin "raw_exec" { config { enabled = true } })',
    "missing compatible host volumes": "those clients lack the host volume the group mounts: "
    'client { host_volume "<source>" { path = "..." } }',
    "${attr.driver.docker.volumes.enabled}": "those clients do not allow bind mounts (the "
    'agent mounts the Docker socket): plugin "docker" { config { volumes { enabled = true } } }',
    "network: reserved port collision": "a static port is taken on those nodes (another "
    "allocation, or the client's reserved ports)",
}


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "t", "true", "yes", "on")


def nomad_client(env: Mapping[str, str] | None = None, timeout: int = 30) -> Any:
    """A python-nomad client configured by the standard NOMAD_* variables."""
    import nomad  # here, not at import: the CLI should not pay for requests

    env = os.environ if env is None else env
    verify: bool | str = not _flag(env, "NOMAD_SKIP_VERIFY") and (
        env.get("NOMAD_CACERT") or env.get("NOMAD_CAPATH") or True
    )
    cert = (env.get("NOMAD_CLIENT_CERT", ""), env.get("NOMAD_CLIENT_KEY", ""))
    if any(cert) and not all(cert):
        raise ConfigError("NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY go together")
    return nomad.Nomad(
        address=(env.get("NOMAD_ADDR") or "http://127.0.0.1:4646").rstrip("/"),
        token=env.get("NOMAD_TOKEN") or None,
        namespace=env.get("NOMAD_NAMESPACE") or None,
        region=env.get("NOMAD_REGION") or None,
        verify=verify,
        cert=cert if all(cert) else (),
        timeout=timeout,
    )


@dataclass
class Report:
    job_id: str
    lines: list[str] = field(default_factory=list)
    placement_failures: list[str] = field(default_factory=list)
    kill_timeout_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.placement_failures and not self.kill_timeout_problems


def jobspec_path(name: str, directory: Path) -> Path:
    """A job by its short name (``server``...) or a path to a jobspec file."""
    path = directory / JOBS[name] if name in JOBS else Path(name)
    if not path.is_file():
        known = ", ".join(JOBS)
        raise ConfigError(f"no jobspec {path} (use one of {known}, or a file)")
    return path


def variables_hcl(pairs: list[str]) -> str:
    """``name=value`` pairs as an HCL2 variables file: lists, maps, numbers and booleans
    are kept as HCL expressions, anything else becomes a string."""
    lines = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--var {pair!r}: expected name=value")
        literal = value.strip()
        rendered = literal if HCL_LITERAL.match(literal) else json.dumps(value)
        lines.append(f"{name.strip()} = {rendered}")
    return "\n".join(lines) + "\n"


def describe_failures(failed: dict[str, Any] | None) -> list[str]:
    """Nomad's FailedTGAllocs (AllocationMetric per task group) in words."""
    out = []
    for group, metric in sorted((failed or {}).items()):
        parts = [f"{metric.get('NodesEvaluated', 0)} nodes evaluated"]
        if metric.get("NodesAvailable"):
            available = ", ".join(
                f"{dc}: {n}" for dc, n in sorted(metric["NodesAvailable"].items())
            )
            parts.append(f"available per datacenter {available}")
        for key, label in (
            ("ClassFiltered", "filtered by class"),
            ("ConstraintFiltered", "filtered by constraint"),
            ("DimensionExhausted", "exhausted"),
        ):
            if metric.get(key):
                reasons = ", ".join(f"{r} ({n})" for r, n in sorted(metric[key].items()))
                parts.append(f"{label}: {reasons}")
        if metric.get("CoalescedFailures"):
            parts.append(f"{metric['CoalescedFailures']} more allocations failed the same way")
        out.append(f"task group {group!r} cannot be placed: " + "; ".join(parts))
        causes = [
            *(metric.get("ConstraintFiltered") or {}),
            *(metric.get("DimensionExhausted") or {}),
        ]
        hints = {hint for key, hint in HINTS.items() for cause in causes if cause.startswith(key)}
        out.extend(f"  hint: {hint}" for hint in sorted(hints))
    return out


def _seconds(raw: Any) -> float | None:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return None


def kill_timeout_problems(job: dict[str, Any], max_kill_timeout_s: float) -> list[str]:
    """Tasks Nomad would SIGKILL before they can stop cleanly: a kill_timeout above the
    clients' max_kill_timeout (Nomad silently caps it), or a Hodei agent whose drain (grace,
    then handing back what still runs) does not fit what it gets."""
    from hodei.agent.settings import DRAIN_MARGIN_S, AgentSettings

    out = []
    for group in job.get("TaskGroups") or []:
        for task in group.get("Tasks") or []:
            name = f"{group.get('Name')}/{task.get('Name')}"
            kill_s = (task.get("KillTimeout") or DEFAULT_KILL_TIMEOUT_S * 1e9) / 1e9
            if kill_s > max_kill_timeout_s:
                out.append(
                    f"task {name!r}: kill_timeout {kill_s:g}s is above the clients' "
                    f"max_kill_timeout ({max_kill_timeout_s:g}s; Nomad's default is 30s), so "
                    f"Nomad kills it after {max_kill_timeout_s:g}s: lower kill_timeout, or "
                    "raise client.max_kill_timeout and pass --max-kill-timeout"
                )
            env = task.get("Env") or {}
            grace = _seconds(env.get("HODEI_DRAIN_GRACE_S"))
            if grace is None:
                continue
            handback = _seconds(env.get("HODEI_DRAIN_HANDBACK_S"))
            handback = AgentSettings().drain_handback_s if handback is None else handback
            budget = min(kill_s, max_kill_timeout_s)
            if grace + handback + DRAIN_MARGIN_S > budget:
                out.append(
                    f"task {name!r}: the agent's drain (grace {grace:g}s + hand-back "
                    f"{handback:g}s + {DRAIN_MARGIN_S:g}s margin) does not fit the {budget:g}s "
                    "Nomad gives it before SIGKILL: running work would not be handed back"
                )
    return out


class NomadDeployer:
    def __init__(
        self,
        client: Any | None = None,
        wait_s: float = 60.0,
        max_kill_timeout_s: float = DEFAULT_MAX_KILL_TIMEOUT_S,
    ) -> None:
        self.client = client if client is not None else nomad_client()
        self.wait_s = wait_s
        self.max_kill_timeout_s = max_kill_timeout_s

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import nomad.api.exceptions

        try:
            return fn(*args, **kwargs)
        except nomad.api.exceptions.BaseNomadException as exc:
            response = getattr(exc, "nomad_resp", None)
            if isinstance(response, Exception):  # python-nomad wraps connection errors
                raise NomadError(f"cannot reach nomad to {what}: {response}") from None
            detail = getattr(response, "text", None) or str(response)
            raise NomadError(f"nomad refused to {what}: {detail.strip()}") from None
        except OSError as exc:  # requests' connection errors are OSErrors
            raise NomadError(f"cannot reach nomad to {what}: {exc}") from None

    def parse(self, path: Path, variables: list[str]) -> dict[str, Any]:
        body = {
            "JobHCL": path.read_text(),
            "Canonicalize": True,
            "Variables": variables_hcl(variables),
        }
        job: dict[str, Any] = self._call(
            f"parse {path.name}",
            lambda: self.client.jobs.request("parse", json=body, method="post").json(),
        )
        return job

    def plan(self, job: dict[str, Any]) -> Report:
        reply = self._call(
            f"plan {job['ID']}", self.client.job.plan_job, job["ID"], {"Job": job}, diff=True
        )
        report = Report(job["ID"])
        diff = (reply.get("Diff") or {}).get("Type", "None")
        report.lines.append(f"job {job['ID']!r}: {diff.lower()}")
        updates = (reply.get("Annotations") or {}).get("DesiredTGUpdates") or {}
        for group, changes in sorted(updates.items()):
            counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(changes.items()) if v)
            report.lines.append(f"  group {group!r}: {counts or 'no change'}")
        report.placement_failures = describe_failures(reply.get("FailedTGAllocs"))
        report.kill_timeout_problems = kill_timeout_problems(job, self.max_kill_timeout_s)
        if reply.get("JobModifyIndex") is not None:
            report.lines.append(f"  check index {reply['JobModifyIndex']}")
        return report

    def deploy(self, job: dict[str, Any]) -> Report:
        problems = kill_timeout_problems(job, self.max_kill_timeout_s)
        if problems:  # registering it would cut drains short: refuse
            return Report(job["ID"], [f"job {job['ID']!r} not registered"], [], problems)
        reply = self._call(
            f"register {job['ID']}", self.client.job.register_job, job["ID"], {"Job": job}
        )
        report = Report(job["ID"])
        eval_id = reply.get("EvalID", "")
        report.lines.append(f"job {job['ID']!r} registered (evaluation {eval_id[:8]})")
        if eval_id:
            evaluation = self._await_evaluation(eval_id)
            report.lines.append(f"  evaluation {evaluation.get('Status', '?')}")
            report.placement_failures = describe_failures(evaluation.get("FailedTGAllocs"))
        return report

    def _await_evaluation(self, eval_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.wait_s
        while True:
            evaluation: dict[str, Any] = self._call(
                "read the evaluation", self.client.evaluation.get_evaluation, eval_id
            )
            if evaluation.get("Status") not in ("pending", "blocked", None):
                return evaluation
            if evaluation.get("FailedTGAllocs") or time.monotonic() > deadline:
                return evaluation
            time.sleep(0.5)

    def status(self, job_id: str) -> Report:
        job = self._call(f"read job {job_id}", self.client.job.get_job, job_id)
        allocations = self._call(
            f"read the allocations of {job_id}", self.client.job.get_allocations, job_id
        )
        report = Report(job_id)
        report.lines.append(
            f"job {job_id!r}: {job.get('Status', '?')} ({job.get('Type', '?')}, "
            f"version {job.get('Version', 0)})"
        )
        for alloc in sorted(allocations, key=lambda a: a.get("NodeName", "")):
            report.lines.append(
                f"  {alloc.get('ID', '')[:8]}  {alloc.get('TaskGroup', '')}  "
                f"{alloc.get('NodeName', '')}  {alloc.get('ClientStatus', '')}"
            )
        if not allocations:
            report.lines.append("  no allocations")
        return report


JOB_IDS = {"redis": "hodei-redis", "agent-raw-exec": "hodei-agent"} | {
    name: f"hodei-{name}" for name in ("server", "gateway", "agent")
}
DECLARED = re.compile(r'^\s*variable\s+"([^"]+)"', re.M)


def add_command(sub: Any) -> None:
    parser = sub.add_parser("nomad", help="plan, deploy or inspect Hodei's Nomad jobs")
    parser.add_argument("action", choices=("plan", "deploy", "status"), help="what to do")
    parser.add_argument(
        "jobs", nargs="*", help=f"{', '.join(JOBS)} or jobspec files (default: {' '.join(ORDER)})"
    )
    parser.add_argument("--var", action="append", default=[], help="name=value (repeatable)")
    parser.add_argument("--jobspecs", default="jobspecs", help="folder of the jobspecs")
    parser.add_argument("--wait-s", type=float, default=60.0, help="deploy: evaluation wait")
    parser.add_argument(
        "--max-kill-timeout",
        type=float,
        default=DEFAULT_MAX_KILL_TIMEOUT_S,
        help="the clients' client.max_kill_timeout in seconds (Nomad's default: 30)",
    )


def run(args: Any, client: Any | None = None) -> int:
    """The ``hodei nomad`` command; 1 when something cannot be placed."""
    names = args.jobs or list(ORDER)
    try:
        deployer = NomadDeployer(client, args.wait_s, args.max_kill_timeout)
        if args.action == "status":
            reports = [deployer.status(JOB_IDS.get(n, n)) for n in names]
        else:
            reports = []
            used: set[str] = set()
            for name in names:
                path = jobspec_path(name, Path(args.jobspecs))
                declared = set(DECLARED.findall(path.read_text()))
                mine = [v for v in args.var if v.partition("=")[0].strip() in declared]
                used |= {v.partition("=")[0].strip() for v in mine}
                job = deployer.parse(path, mine)
                act = deployer.plan if args.action == "plan" else deployer.deploy
                reports.append(act(job))
            unknown = {v.partition("=")[0].strip() for v in args.var} - used
            if unknown:
                raise ConfigError(f"no selected jobspec declares {', '.join(sorted(unknown))}")
    except (NomadError, ConfigError) as exc:
        print(f"hodei nomad: {exc}")
        return 2
    failed = False
    for report in reports:
        print("\n".join(report.lines))
        for failure in report.placement_failures:
            prefix = "" if failure.startswith("  hint:") else "PLACEMENT FAILURE: "
            print(f"  {prefix}{failure.strip()}" if prefix else f"    {failure.strip()}")
        for problem in report.kill_timeout_problems:
            print(f"  KILL TIMEOUT: {problem}")
        failed = failed or not report.ok
    return 1 if failed else 0
