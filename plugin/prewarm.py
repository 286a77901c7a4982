"""Pre-warming: how many instances of each lambda function every worker should keep started,
so that ``warm.min`` of them exist across the fleet before any invocation asks.

Pure: the leader's scheduler computes the plan from its view of the fleet and sends each
worker the number it should hold (a ``PrewarmRequest``; the agent treats it as a floor its
idle reaper respects) whenever that number changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from hodei.plugin.models import FunctionSpec
from hodei.plugin.placement import Fleet, WorkerView

# (worker id, "function:revision") -> instances wanted there
Plan = dict[tuple[str, str], int]


def _can_host(w: WorkerView, spec: FunctionSpec) -> bool:
    r = spec.resources
    return (
        w.schedulable
        and spec.runtime in w.runtimes
        and all(w.labels.get(k) == v for k, v in spec.labels.items())
        and w.cpu_total >= r.cpu_millicores
        and w.mem_total >= r.memory_mb
        and w.gpu_total >= r.gpus
    )


def plan(functions: Iterable[tuple[FunctionSpec, str]], fleet: Fleet) -> Plan:
    """Spread ``warm.min`` instances of each (spec, revision) over the workers that can
    host one: the workers that already hold instances keep them, the rest go one by one to
    the emptiest workers, never more than ``warm.max`` on one."""
    wanted: Plan = {}
    for spec, revision in functions:
        if spec.interface != "lambda" or spec.warm.min <= 0:
            continue
        key = f"{spec.name}:{revision}"
        hosts = sorted(
            (w for w in fleet.workers.values() if _can_host(w, spec)),
            key=lambda w: (
                -w.instances.get(key, 0),
                w.mem_used / max(1, w.mem_total),
                w.id,
            ),
        )
        if not hosts:
            continue
        cap = spec.warm.max or spec.warm.min
        counts = dict.fromkeys((w.id for w in hosts), 0)
        left = spec.warm.min
        while left > 0:
            placed = False
            for w in hosts:
                if left == 0:
                    break
                if counts[w.id] < cap:
                    counts[w.id] += 1
                    left -= 1
                    placed = True
            if not placed:
                break  # every host is at warm.max
        for worker_id, n in counts.items():
            if n:
                wanted[(worker_id, key)] = n
    return wanted


def changes(sent: Plan, wanted: Plan) -> Plan:
    """What to send for ``wanted`` when ``sent`` was sent before: new or changed numbers,
    and 0 for what is no longer wanted (the agent lets that pool shrink)."""
    out = {k: n for k, n in wanted.items() if sent.get(k) != n}
    out.update({k: 0 for k in sent if k not in wanted})
    return out
