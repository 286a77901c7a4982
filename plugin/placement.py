"""Bin-packing worker selection: feasibility first, then a score, over a bounded sample.

The fleet view is an in-memory cache of every worker's capacity and reservations (the
seed's "Worker Cache"). Workers with free room are kept in an "open" list; a placement
scans it from a rotating cursor and scores at most ``max_candidates`` feasible workers
(looking at no more than ``max_scan``), so a decision costs the same with 1,000 or 10,000
workers. Only when that sample holds no feasible worker is the whole open list scanned,
and the answer for that demand is remembered until capacity is freed somewhere, so a job
that fits nowhere costs one full scan per change of the fleet, not one per pass.

Warmth comes first: a lambda function's invocation goes to a feasible worker with an idle
instance of that function revision when there is one (its instance answers at once), and
only then to the best-scored worker, where it starts a new instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The seed's target band of utilisation: fill a worker into it, avoid going past it
# while another worker can take the job.
BAND_LOW = 0.60
BAND_HIGH = 0.85


@dataclass(slots=True)
class WorkerView:
    id: str
    cpu_total: int
    mem_total: int
    gpu_total: int
    slots_total: int
    cpu_used: int = 0
    mem_used: int = 0
    gpu_used: int = 0
    slots_used: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    runtimes: frozenset[str] = frozenset({"process"})
    schedulable: bool = True
    health: float = 1.0
    server_id: str = ""
    # Idle lambda instances on the worker, and all its live ones, by "function:revision".
    idle: dict[str, int] = field(default_factory=dict)
    instances: dict[str, int] = field(default_factory=dict)

    @property
    def is_open(self) -> bool:
        return (
            self.schedulable
            and self.slots_used < self.slots_total
            and self.cpu_used < self.cpu_total
            and self.mem_used < self.mem_total
        )


@dataclass(frozen=True, slots=True)
class Demand:
    cpu: int
    mem: int
    gpu: int = 0
    runtime: str = "process"
    labels: tuple[tuple[str, str], ...] = ()
    # A lambda function's "function:revision": workers with an idle instance of it go first.
    warm: str = ""


@dataclass(frozen=True, slots=True)
class Pending:
    reason: str
    # True when freed capacity cannot help (label, runtime, size, no worker at all): only a
    # change of the fleet can.
    structural: bool = False


def fits(w: WorkerView, d: Demand) -> bool:
    return (
        w.cpu_total - w.cpu_used >= d.cpu
        and w.mem_total - w.mem_used >= d.mem
        and w.gpu_total - w.gpu_used >= d.gpu
        and w.slots_used < w.slots_total
        and d.runtime in w.runtimes
        and all(w.labels.get(k) == v for k, v in d.labels)
    )


def score(w: WorkerView, d: Demand) -> float:
    """Higher is better. Tiers by where the placement leaves the worker's binding
    dimension: inside the 60-85 % band, then below it (pack towards the band), then past
    it (only when nothing else takes the job; best fit there). Within a tier: CPU fit,
    memory fit, balance between the dimensions (a worker full in one and empty in another
    strands capacity) and health.
    """
    u_cpu = (w.cpu_used + d.cpu) / w.cpu_total
    u_mem = (w.mem_used + d.mem) / w.mem_total
    u_slots = (w.slots_used + 1) / w.slots_total
    binding = max(u_cpu, u_mem)
    if BAND_LOW <= binding <= BAND_HIGH:
        tier = 2.0
    elif binding < BAND_LOW:
        tier = 1.0
    else:
        tier = 0.0
    balance = 1.0 - abs(u_cpu - u_mem)
    fill = 0.45 * u_cpu + 0.35 * u_mem + 0.05 * u_slots
    return tier + 0.8 * fill + 0.1 * balance + 0.1 * w.health


class Fleet:
    """The scheduler's view of the workers, with bounded-cost placement."""

    def __init__(self, max_candidates: int = 16, max_scan: int = 512) -> None:
        self.max_candidates = max_candidates
        self.max_scan = max_scan
        self.workers: dict[str, WorkerView] = {}
        self._open: list[WorkerView] = []
        self._open_index: dict[str, int] = {}
        self._cursor = 0
        # Bumped whenever capacity may have grown; remembered "fits nowhere" answers of an
        # older version are stale.
        self.version = 0
        self._nowhere: dict[Demand, tuple[int, Pending]] = {}
        # "function:revision" -> the workers with an idle instance of it
        self._warm: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self.workers)

    @property
    def open_workers(self) -> int:
        """How many schedulable workers have a free slot and some CPU and memory left."""
        return len(self._open)

    @property
    def has_room(self) -> bool:
        """Some schedulable worker has a free slot and some CPU and memory left."""
        return bool(self._open)

    def upsert(self, w: WorkerView) -> None:
        old = self.workers.get(w.id)
        if old is not None:
            self._unindex_warm(old)
        self.workers[w.id] = w
        self.version += 1
        self._reindex(w)
        for key, n in w.idle.items():
            if n > 0:
                self._warm.setdefault(key, set()).add(w.id)

    def remove(self, worker_id: str) -> None:
        w = self.workers.pop(worker_id, None)
        if w is not None:
            self._unindex_warm(w)
            self._drop_open(worker_id)

    def _unindex_warm(self, w: WorkerView) -> None:
        for key in w.idle:
            self._drop_warm(key, w.id)

    def _drop_warm(self, key: str, worker_id: str) -> None:
        holders = self._warm.get(key)
        if holders is not None:
            holders.discard(worker_id)
            if not holders:
                del self._warm[key]

    def reserve(self, worker_id: str, d: Demand) -> None:
        w = self.workers[worker_id]
        if d.warm and w.idle.get(d.warm, 0) > 0:
            # The invocation takes one of the idle instances.
            w.idle[d.warm] -= 1
            if not w.idle[d.warm]:
                del w.idle[d.warm]
                self._drop_warm(d.warm, w.id)
        w.cpu_used += d.cpu
        w.mem_used += d.mem
        w.gpu_used += d.gpu
        w.slots_used += 1
        self._reindex(w)

    def release(self, worker_id: str, d: Demand) -> None:
        w = self.workers.get(worker_id)
        if w is None:
            return
        w.cpu_used = max(0, w.cpu_used - d.cpu)
        w.mem_used = max(0, w.mem_used - d.mem)
        w.gpu_used = max(0, w.gpu_used - d.gpu)
        w.slots_used = max(0, w.slots_used - 1)
        self.version += 1
        self._reindex(w)

    def place(self, d: Demand) -> WorkerView | Pending:
        """The best worker for ``d`` among a bounded sample, or why there is none."""
        if d.warm:
            warm = self._warmest(d)
            if warm is not None:
                return warm
        remembered = self._nowhere.get(d)
        if remembered is not None and remembered[0] == self.version:
            return remembered[1]
        n = len(self._open)
        best: WorkerView | None = None
        best_score = -1.0
        found = 0
        scanned = 0
        start = self._cursor % n if n else 0
        limit = min(n, self.max_scan)
        open_workers = self._open
        while scanned < limit:
            w = open_workers[(start + scanned) % n]
            scanned += 1
            if fits(w, d):
                s = score(w, d)
                if s > best_score:
                    best, best_score = w, s
                found += 1
                if found >= self.max_candidates:
                    break
        # Rotate so consecutive decisions sample different workers.
        self._cursor = start + scanned
        if best is not None:
            return best
        if scanned < n:
            for i in range(scanned, n):
                w = open_workers[(start + i) % n]
                if fits(w, d):
                    s = score(w, d)
                    if s > best_score:
                        best, best_score = w, s
            if best is not None:
                return best
        pending = self.why_not(d)
        if len(self._nowhere) > 10_000:
            self._nowhere.clear()
        self._nowhere[d] = (self.version, pending)
        return pending

    def _warmest(self, d: Demand) -> WorkerView | None:
        """The best-scored feasible worker holding an idle instance for ``d``, looking at
        no more than ``max_candidates`` of them."""
        best: WorkerView | None = None
        best_score = -1.0
        for n, worker_id in enumerate(self._warm.get(d.warm, ())):
            if n >= self.max_candidates:
                break
            w = self.workers[worker_id]
            if w.schedulable and fits(w, d):
                s = score(w, d)
                if s > best_score:
                    best, best_score = w, s
        return best

    def why_not(self, d: Demand) -> Pending:
        """Why no worker can take ``d`` now, in words for humans."""
        candidates = [w for w in self.workers.values() if w.schedulable]
        if not candidates:
            return Pending("no schedulable workers", structural=True)
        candidates = [w for w in candidates if d.runtime in w.runtimes]
        if not candidates:
            return Pending(f"no worker offers the {d.runtime} runtime", structural=True)
        for k, v in d.labels:
            candidates = [w for w in candidates if w.labels.get(k) == v]
            if not candidates:
                return Pending(f"no worker has label {k}={v}", structural=True)
        too_small = [
            (name, need, biggest)
            for name, need, biggest in (
                ("cpu_millicores", d.cpu, max(w.cpu_total for w in candidates)),
                ("memory_mb", d.mem, max(w.mem_total for w in candidates)),
                ("gpus", d.gpu, max(w.gpu_total for w in candidates)),
            )
            if need > biggest
        ]
        if too_small:
            name, need, biggest = too_small[0]
            return Pending(
                f"needs {name}={need} but the largest worker has {biggest}: fits nowhere",
                structural=True,
            )
        free = [w for w in candidates if w.slots_used < w.slots_total]
        if not free:
            return Pending("every eligible worker has all its job slots in use")
        return Pending(
            f"waiting for capacity: needs cpu_millicores={d.cpu}, memory_mb={d.mem}, "
            f"gpus={d.gpu}; most free now cpu={max(w.cpu_total - w.cpu_used for w in free)}, "
            f"memory={max(w.mem_total - w.mem_used for w in free)}, "
            f"gpus={max(w.gpu_total - w.gpu_used for w in free)}"
        )

    def _reindex(self, w: WorkerView) -> None:
        if w.is_open:
            i = self._open_index.get(w.id)
            if i is None:
                self._open_index[w.id] = len(self._open)
                self._open.append(w)
            else:
                self._open[i] = w  # upsert may bring a new object for the same worker
        else:
            self._drop_open(w.id)

    def _drop_open(self, worker_id: str) -> None:
        i = self._open_index.pop(worker_id, None)
        if i is None:
            return
        last = self._open.pop()
        if last.id != worker_id:
            self._open[i] = last
            self._open_index[last.id] = i
