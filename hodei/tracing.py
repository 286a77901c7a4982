"""W3C trace context for invocations, and OpenTelemetry spans when it is configured.

Every invocation carries a ``traceparent``: the caller's, or one the gateway creates. It
travels through Redis and gRPC to the agent and into the function's environment. With
OpenTelemetry installed (the ``otel`` extra) and configured through the standard ``OTEL_*``
variables (``OTEL_TRACES_EXPORTER`` or ``OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT``), gateway,
scheduler and agent emit spans under that trace: submit, queue wait, schedule, execute.
Off by default; ``OTEL_SDK_DISABLED=true`` turns it off.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_tracer: Any = None


def valid(traceparent: str) -> bool:
    match = TRACEPARENT.match(traceparent)
    return bool(match) and match.group(1) != "0" * 32 and match.group(2) != "0" * 16  # type: ignore[union-attr]


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def trace_id(traceparent: str) -> str:
    match = TRACEPARENT.match(traceparent)
    return match.group(1) if match else ""


def active() -> bool:
    """Whether this process records spans (callers skip building span attributes if not)."""
    return _tracer is not None


def enabled(env: Mapping[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "")
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup(component: str) -> bool:
    """Install a tracer provider for this process when OpenTelemetry is configured."""
    global _tracer
    if not enabled():
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        log.warning(
            "OTEL_* is set but OpenTelemetry is not installed "
            "(pip install -e '.[otel]' in Hodei's checkout)"
        )
        return False
    name = os.environ.get("OTEL_SERVICE_NAME") or f"hodei-{component}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    exporter: Any
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp") == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("hodei")
    log.info("tracing: exporting spans as %s", name)
    return True


def span(
    name: str,
    traceparent: str,
    start_ns: int,
    end_ns: int,
    attributes: dict[str, Any],
    error: str = "",
) -> None:
    """Record a finished span of ``name`` under ``traceparent`` (a no-op unless set up).

    Spans are recorded after the fact, with their real start and end, so that the code
    measured needs no context manager around it (a queue wait spans two processes)."""
    if _tracer is None or not valid(traceparent):
        return
    from opentelemetry.trace import Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    recorded = _tracer.start_span(name, context=context, start_time=start_ns, attributes=attributes)
    if error:
        recorded.set_status(Status(StatusCode.ERROR, error))
    recorded.end(end_time=max(start_ns, end_ns))


def start(name: str, incoming: str, attributes: dict[str, Any]) -> tuple[str, Any]:
    """Open a span now (the gateway's submit); returns the traceparent the invocation
    carries — the caller's when valid, else this span's as the root of a new trace — and
    a function that ends the span (``end(error="")``)."""
    if _tracer is None:
        return (incoming if valid(incoming) else new_traceparent()), _no_end
    from opentelemetry.trace import Status, StatusCode, format_span_id, format_trace_id
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = (
        TraceContextTextMapPropagator().extract({"traceparent": incoming})
        if valid(incoming)
        else None
    )
    opened = _tracer.start_span(name, context=context, attributes=attributes)
    own = opened.get_span_context()
    carried = (
        incoming
        if valid(incoming)
        else f"00-{format_trace_id(own.trace_id)}-{format_span_id(own.span_id)}-01"
    )

    def end(error: str = "") -> None:
        if error:
            opened.set_status(Status(StatusCode.ERROR, error))
        opened.end()

    return carried, end


def _no_end(error: str = "") -> None:
    return None
