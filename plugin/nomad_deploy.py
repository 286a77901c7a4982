"""``hodei nomad plan|deploy|status``: the jobspecs of ``jobspecs/`` through Nomad's API
(python-nomad). Nomad itself parses the HCL2 (``/v1/jobs/parse`` with the variables), then
plans or registers the job; placement failures are spelled out group by group.

``NOMAD_ADDR``, ``NOMAD_TOKEN``, ``NOMAD_NAMESPACE`` and ``NOMAD_REGION`` are honoured.
"""

from __future__ import annotations

import json
import re
import time
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


@dataclass
class Report:
    job_id: str
    lines: list[str] = field(default_factory=list)
    placement_failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.placement_failures


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
    return out


class NomadDeployer:
    def __init__(self, client: Any | None = None, wait_s: float = 60.0) -> None:
        import nomad  # here, not at import: the CLI should not pay for requests

        self.client = client if client is not None else nomad.Nomad(timeout=30)
        self.wait_s = wait_s

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
        if reply.get("JobModifyIndex") is not None:
            report.lines.append(f"  check index {reply['JobModifyIndex']}")
        return report

    def deploy(self, job: dict[str, Any]) -> Report:
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


def run(args: Any, client: Any | None = None) -> int:
    """The ``hodei nomad`` command; 1 when something cannot be placed."""
    deployer = NomadDeployer(client, wait_s=args.wait_s)
    names = args.jobs or list(ORDER)
    try:
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
            print(f"  PLACEMENT FAILURE: {failure}")
        failed = failed or not report.ok
    return 1 if failed else 0
