"""What the scheduler sees: a worker record as placement views it, a function's demand,
and a queued invocation as it is cached while it waits."""

from __future__ import annotations

from dataclasses import dataclass

from hodei.plugin.data.records import WorkerRecord
from hodei.plugin.data.workers import SCHEDULABLE
from hodei.plugin.models import FunctionSpec
from hodei.plugin.placement import Demand, WorkerView


@dataclass(slots=True)
class Waiting:
    """A queued invocation as the scheduler knows it (cached while it waits)."""

    function: str
    revision: str
    published_reason: str
    demand: Demand | None = None
    pending_reason: str = ""
    structural: bool = False
    decided_ns: int = 0  # when the scheduler took it up (the schedule span starts)


def view_of(w: WorkerRecord, now: int, heartbeat_ms: int) -> WorkerView:
    """The scheduler's view of a worker record; health falls as heartbeats get late."""
    age = max(0, now - (w.last_heartbeat_ms or now))
    health = 1.0 if age <= heartbeat_ms * 1.5 else max(0.5, 1.0 - age / (heartbeat_ms * 6))
    health -= min(0.3, 0.1 * w.unhealthy_count)
    return WorkerView(
        id=w.id,
        cpu_total=w.capacity.cpu,
        mem_total=w.capacity.mem,
        gpu_total=w.capacity.gpu,
        slots_total=w.capacity.slots,
        cpu_used=w.used.cpu,
        mem_used=w.used.mem,
        gpu_used=w.used.gpu,
        slots_used=w.used.slots,
        labels=w.labels,
        runtimes=w.runtimes,
        schedulable=w.state in SCHEDULABLE,
        health=health,
        server_id=w.server_id,
        idle={f"{p.function}:{p.revision}": p.idle for p in w.pools if p.idle > 0},
        instances={f"{p.function}:{p.revision}": p.idle + p.busy + p.starting for p in w.pools},
    )


def demand_of(spec: FunctionSpec, revision: str) -> Demand:
    r = spec.resources
    return Demand(
        r.cpu_millicores,
        r.memory_mb,
        r.gpus,
        spec.runtime,
        tuple(sorted(spec.labels.items())),
        f"{spec.name}:{revision}" if spec.interface == "lambda" else "",
    )
