"""Prometheus metrics of the control plane (names from the seed plus operator needs)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
)

WORKER_HEARTBEATS = Counter(
    "hodei_worker_heartbeats_total", "Heartbeats received from workers", ["worker"]
)
WORKER_CPU = Gauge(
    "hodei_worker_cpu_usage_percent",
    "CPU usage a worker reported in its last heartbeat",
    ["worker"],
)
WORKER_MEMORY = Gauge(
    "hodei_worker_memory_usage_percent", "Memory usage a worker reported last", ["worker"]
)
WORKER_UTILISATION = Gauge(
    "hodei_worker_reserved_ratio",
    "Reserved share of a worker's capacity (target band 0.60-0.85)",
    ["worker", "resource"],
)
WORKERS = Gauge("hodei_workers", "Workers known to the scheduler by state", ["state"])
QUEUE_SIZE = Gauge("hodei_scheduler_queue_size", "Invocations waiting to be placed", ["priority"])
SCHEDULING_LATENCY = Histogram(
    "hodei_scheduling_latency_seconds",
    "From enqueue to lease (first attempt)",
    buckets=LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "hodei_queue_wait_seconds",
    "Time an attempt waited in the ready queue before its lease (every attempt)",
    buckets=LATENCY_BUCKETS,
)
DECISION_SECONDS = Histogram(
    "hodei_scheduler_decision_seconds",
    "Time to choose a worker for one invocation",
    buckets=(0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01),
)
PLACEMENTS = Counter("hodei_scheduler_placements_total", "Invocations leased to workers")
INVOCATIONS = Counter(
    "hodei_invocations_total",
    "Invocation attempts ended, by function and status",
    ["function", "status"],
)
RETRIES = Counter("hodei_retries_total", "Invocation attempts scheduled for a retry")
LEASE_EXPIRIES = Counter("hodei_lease_expiries_total", "Leases reclaimed after their deadline")
STALE_RESULTS = Counter(
    "hodei_stale_results_total", "Results rejected because they were not of the current attempt"
)
DEAD_LETTERS = Gauge(
    "hodei_dead_letters", "Failed invocations in the dead-letter index (retries exhausted)"
)
STARTS = Counter(
    "hodei_lambda_starts_total",
    "Lambda invocations by whether they started an instance (cold) or found one (warm)",
    ["function", "start"],
)
INSTANCES = Gauge(
    "hodei_lambda_instances", "Lambda instances across the fleet, by state", ["state"]
)
STREAMS = Gauge("hodei_grpc_streams", "Open agent JobStreams on this server")
IS_LEADER = Gauge("hodei_scheduler_leader", "1 while this server is the scheduling leader")
