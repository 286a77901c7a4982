"""Prometheus metrics of the gateway."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INVOCATIONS = Counter(
    "hodei_gateway_invocations_total",
    "Invocations submitted through the gateway, by outcome",
    ["function", "status"],
)
INVOKE_LATENCY = Histogram(
    "hodei_gateway_invoke_duration_seconds",
    "Time to answer an invoke request, by mode",
    ["mode"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IN_FLIGHT = Gauge("hodei_gateway_requests_in_flight", "HTTP requests being served")
REJECTED = Counter(
    "hodei_gateway_rejected_total", "Invocations refused by backpressure", ["reason"]
)
