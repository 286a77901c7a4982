"""Scheduler benchmark: placement throughput and decision latency with 1,000 and 10,000
simulated workers, and packing quality against first-fit-decreasing.

Run: python bench/scheduler.py   (ends with key=value lines)
"""

from __future__ import annotations

import os
import sys

# bench/http.py is named like the standard library's http package: keep this folder off the
# import path so that `import http` (aiohttp, prometheus_client) finds the real one.
sys.path[:] = [
    p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))
]

import random
import statistics
import time

from hodei.plugin.placement import Demand, Fleet, Pending, WorkerView

CPU, MEM, SLOTS = 8000, 16384, 16
SIZES = [
    (250, 512),
    (500, 1024),
    (1000, 2048),
    (2000, 4096),
    (4000, 8192),
    (500, 4096),
    (2000, 1024),
]


def make_fleet(n: int) -> Fleet:
    fleet = Fleet()
    for i in range(n):
        fleet.upsert(WorkerView(f"w{i}", CPU, MEM, 0, SLOTS))
    return fleet


def workload(n: int, rng: random.Random) -> list[Demand]:
    return [Demand(*rng.choice(SIZES)) for _ in range(n)]


def throughput(workers: int, rng: random.Random) -> tuple[float, float]:
    """Steady state at ~75 % utilisation: every placement is followed by the release of
    the oldest running job, as completions would."""
    fleet = make_fleet(workers)
    running: list[tuple[str, Demand]] = []
    reserved_cpu, target_cpu = 0, int(workers * CPU * 0.75)
    while reserved_cpu < target_cpu:
        d = Demand(*rng.choice(SIZES))
        w = fleet.place(d)
        if isinstance(w, Pending):
            break
        fleet.reserve(w.id, d)
        running.append((w.id, d))
        reserved_cpu += d.cpu
    jobs = workload(30_000, rng)
    latencies: list[float] = []
    placed = 0
    started = time.perf_counter()
    for d in jobs:
        t0 = time.perf_counter_ns()
        w = fleet.place(d)
        if not isinstance(w, Pending):
            fleet.reserve(w.id, d)
            running.append((w.id, d))
            placed += 1
        latencies.append((time.perf_counter_ns() - t0) / 1000)
        if running:
            wid, old = running.pop(rng.randrange(len(running)))
            fleet.release(wid, old)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return placed / elapsed, latencies[int(len(latencies) * 0.99)]


def size(d: Demand) -> float:
    return max(d.cpu / CPU, d.mem / MEM)


def ffd_placed(workers: int, jobs: list[Demand]) -> float:
    free = [[CPU, MEM, SLOTS] for _ in range(workers)]
    total = 0.0
    for d in sorted(jobs, key=size, reverse=True):
        for f in free:
            if f[0] >= d.cpu and f[1] >= d.mem and f[2] >= 1:
                f[0] -= d.cpu
                f[1] -= d.mem
                f[2] -= 1
                total += d.cpu / CPU + d.mem / MEM
                break
    return total


def hodei_placed(workers: int, jobs: list[Demand]) -> float:
    fleet = make_fleet(workers)
    total = 0.0
    for d in jobs:
        w = fleet.place(d)
        if not isinstance(w, Pending):
            fleet.reserve(w.id, d)
            total += d.cpu / CPU + d.mem / MEM
    return total


def ffd_bins(jobs: list[Demand]) -> int:
    return _bins(
        sorted(jobs, key=size, reverse=True),
        lambda free, d: next(
            (i for i, f in enumerate(free) if f[0] >= d.cpu and f[1] >= d.mem and f[2] >= 1), None
        ),
    )


def _bins(jobs: list[Demand], choose) -> int:  # type: ignore[no-untyped-def]
    free: list[list[int]] = []
    for d in jobs:
        i = choose(free, d)
        if i is None:
            free.append([CPU, MEM, SLOTS])
            i = len(free) - 1
        free[i][0] -= d.cpu
        free[i][1] -= d.mem
        free[i][2] -= 1
    return len(free)


def hodei_bins(jobs: list[Demand], fleet_size: int) -> int:
    fleet = make_fleet(fleet_size)
    used: set[str] = set()
    for d in jobs:
        w = fleet.place(d)
        assert not isinstance(w, Pending)
        fleet.reserve(w.id, d)
        used.add(w.id)
    return len(used)


def main() -> int:
    rng = random.Random(7)
    results: dict[str, str] = {}
    per_size: dict[int, list[float]] = {}
    for workers in (1_000, 10_000):
        rates, p99s = [], []
        for _ in range(3):
            rate, p99 = throughput(workers, rng)
            rates.append(rate)
            p99s.append(p99)
        per_size[workers] = rates
        results[f"placements_per_s_{workers}"] = f"{statistics.median(rates):.0f}"
        results[f"placements_per_s_{workers}_spread"] = f"{min(rates):.0f}-{max(rates):.0f}"
        results[f"p99_decision_us_{workers}"] = f"{statistics.median(p99s):.1f}"
    flat = statistics.median(per_size[10_000]) / statistics.median(per_size[1_000])
    ratios, bin_ratios = [], []
    for seed in range(5):
        jobs = workload(3000, random.Random(seed))
        ratios.append(ffd_placed(100, jobs) / hodei_placed(100, jobs))
        small = jobs[:600]
        bin_ratios.append(hodei_bins(small, 400) / ffd_bins(small))
    print(f"# scheduler benchmark, python {sys.version.split()[0]}")
    for k, v in results.items():
        print(f"{k}={v}")
    print(f"placements_per_s={results['placements_per_s_10000']}")
    print(f"p99_decision_us={results['p99_decision_us_10000']}")
    print(f"cost_ratio_10k_vs_1k={1 / flat:.2f}")
    print(f"packing_ratio_vs_ffd={statistics.median(ratios):.3f}")
    print(f"packing_ratio_vs_ffd_spread={min(ratios):.3f}-{max(ratios):.3f}")
    print(f"workers_used_ratio_vs_ffd={statistics.median(bin_ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
