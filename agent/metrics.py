"""Prometheus metrics of the worker agent."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

# The agent's own registry: the server exports series of the same names (heartbeats, CPU
# usage as it received them), and both may live in one Python process (tests, `hodei dev`).
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

JOB_DURATION = Histogram(
    "hodei_job_execution_duration_seconds",
    "Wall time of one job attempt on this worker",
    ["function", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
    registry=REGISTRY,
)
HEARTBEATS = Counter(
    "hodei_worker_heartbeats_total", "Heartbeats sent by this agent", ["worker"], registry=REGISTRY
)
CPU = Gauge(
    "hodei_worker_cpu_usage_percent", "CPU usage of this node", ["worker"], registry=REGISTRY
)
MEMORY = Gauge(
    "hodei_worker_memory_usage_percent", "Memory usage of this node", ["worker"], registry=REGISTRY
)
RUNNING_JOBS = Gauge("hodei_agent_running_jobs", "Jobs running on this agent", registry=REGISTRY)
RECONNECTS = Counter(
    "hodei_agent_reconnects_total", "Connections to a server after the first", registry=REGISTRY
)
BUFFERED_RESULTS = Gauge(
    "hodei_agent_buffered_results",
    "Results waiting for the server's acknowledgement",
    registry=REGISTRY,
)
