"""The Grafana dashboards and Prometheus examples in ``dashboards/``: every PromQL
expression names only metrics (and labels) that the process its ``job`` selects really
exports, and the scrape examples define those jobs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics import MetricWrapperBase

from hodei.agent import metrics as agent_metrics
from hodei.api import metrics as gateway_metrics
from hodei.plugin import metrics as server_metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"[^"]*"')
IDENTIFIER = re.compile(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*")
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
KEYWORDS = {"and", "or", "unless", "bool", "offset", "le", "inf", "nan"}
ALWAYS = {"job", "instance"}


def _samples(metric: MetricWrapperBase) -> set[str]:
    found = set()
    for family in metric.describe():
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("_count", "_sum", "_created"),
        }.get(family.type, ("",))
        found |= {family.name + s for s in suffixes}
    return found


def _exported(module: Any) -> dict[str, set[str]]:
    """Sample name -> label names, for every metric object a metrics module defines."""
    out: dict[str, set[str]] = {}
    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            for sample in _samples(value):
                labels = set(value._labelnames)
                if sample.endswith("_bucket"):
                    labels.add("le")
                out[sample] = labels
    return out


def _process_metrics() -> dict[str, set[str]]:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return {s.name: set(s.labels) for m in registry.collect() for s in m.samples}


EXPORTED = {
    "hodei-server": _exported(server_metrics) | _process_metrics(),
    "hodei-agent": _exported(agent_metrics) | _process_metrics(),
    "hodei-gateway": _exported(gateway_metrics) | _process_metrics(),
}


def expressions(dashboard: dict[str, Any]) -> list[str]:
    found = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable.get("type") == "query":
            query = variable["query"]
            found.append(query["query"] if isinstance(query, dict) else query)
    return found


def check(expr: str) -> list[str]:
    """What in ``expr`` no Hodei process exports; empty when all is real."""
    problems = []
    text = expr.replace("$__rate_interval", "5m")
    # label_values(selector, label): the second argument is a label, not a metric.
    text = re.sub(r"label_values\((.*),\s*\w+\s*\)", r"(\1)", text)
    for name, body in SELECTOR.findall(text):
        job = re.search(r'job\s*=\s*"([^"]+)"', body)
        if not job or job.group(1) not in EXPORTED:
            problems.append(f"{name}: no job selector naming a Hodei process")
            continue
        exported = EXPORTED[job.group(1)]
        if name not in exported:
            problems.append(f"{name} is not exported by {job.group(1)}")
            continue
        for label, _op in LABEL.findall(body):
            if label not in exported[name] | ALWAYS:
                problems.append(f"{name} has no label {label}")
    rest = SELECTOR.sub(" ", text)
    rest = GROUPING.sub(" ", rest)
    rest = re.sub(r'"[^"]*"|\[[^\]]*\]|\b\d+(\.\d+)?(e-?\d+)?\b', " ", rest)
    everything = set().union(*(set(e) for e in EXPORTED.values()))
    for match in IDENTIFIER.finditer(rest):
        name = match.group()
        if rest[match.end() :].lstrip().startswith("("):
            continue  # a function
        if name not in KEYWORDS and name not in everything:
            problems.append(f"{name} is not exported by any process")
    return problems


def test_the_seeds_four_dashboards_exist() -> None:
    titles = {json.loads(p.read_text())["title"] for p in DASHBOARDS}
    assert titles == {
        "Hodei / Worker Overview",
        "Hodei / Job Performance",
        "Hodei / Resource Utilization",
        "Hodei / Scheduler Health",
    }


@pytest.mark.parametrize(
    ("stem", "metric"),
    [
        ("worker-overview", "hodei_worker_heartbeats_total"),
        ("job-performance", "hodei_job_execution_duration_seconds"),
        ("resource-utilization", "hodei_worker_cpu_usage_percent"),
        ("scheduler-health", "hodei_scheduler_queue_size"),
    ],
)
def test_each_dashboard_shows_its_seed_metric(stem: str, metric: str) -> None:
    # The seed's diagram: P1 -> G1 ... P4 -> G4.
    dashboard = json.loads((ROOT / "dashboards" / f"{stem}.json").read_text())
    assert any(metric in expr for expr in expressions(dashboard))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_queries_only_exported_metrics(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    exprs = expressions(dashboard)
    assert exprs
    problems = [f"{e!r}: {p}" for e in exprs for p in check(e)]
    assert not problems, "\n".join(problems)
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["gridPos"]["w"] > 0


def test_the_checker_catches_what_is_not_exported() -> None:
    assert check('rate(hodei_invocations_total{job="hodei-server"}[5m])') == []
    assert check('hodei_invocations_total{job="hodei-agent"}')  # wrong process
    assert check('hodei_workers{job="hodei-server",colour="red"}')  # no such label
    assert check('sum(hodei_made_up_seconds{job="hodei-server"})')
    assert check('hodei_workers{job="hodei-server"} / hodei_invented')  # bare name
    assert check("sum by (worker) (hodei_invented_too)")


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-consul.yml"])
def test_scrape_examples_define_the_jobs_the_dashboards_select(name: str) -> None:
    config = yaml.safe_load((ROOT / "dashboards" / name).read_text())
    jobs = {c["job_name"]: c for c in config["scrape_configs"]}
    used = {
        job
        for path in DASHBOARDS
        for expr in expressions(json.loads(path.read_text()))
        for job in re.findall(r'job\s*=\s*"([^"]+)"', expr)
    }
    assert used == set(jobs) == set(EXPORTED)
    for job in jobs.values():
        assert job.get("metrics_path", "/metrics") == "/metrics"
        assert job.get("static_configs") or job.get("consul_sd_configs")
