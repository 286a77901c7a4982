"""Hodei side by side with Celery, dramatiq, RQ, arq and taskiq: alternated rounds on the
same Redis (one database per system, flushed before each round), in one process tree.

Every system runs a no-op task and a task that runs ``/bin/true`` as a subprocess (Hodei's
stdio functions always spawn: ``spawn`` is the fair comparison; Hodei's ``noop`` is a warm
lambda instance, measured once the function spec accepts ``"interface": "lambda"``).
Each measurement enqueues N jobs through the system's own client API, as fast as it takes
them, and times the first enqueue to the last completion. Peers signal completion by
writing one byte on a FIFO from the task; Hodei's completions come from the Redis channel
its servers publish on. Worker configurations (for 2 cores) are printed in the header.

Run: python bench/peers.py [--jobs 3000] [--rounds 3] [--systems hodei,celery,…]
Prints per system and variant `…jobs_per_s=` (median) with `_spread=` (min-max) and
`cpu_ms_per_job` per process (Hodei's agent apart from ``agent_children``: the functions'
processes it runs, the lambda instances' runtime client among them), then
`hodei_vs_best_peer_spawn=`, `hodei_vs_best_peer_noop=` and
`redis_bytes_per_queued_invocation=` (key=value lines).
"""

from __future__ import annotations

import os
import sys

# bench/http.py is named like the standard library's http package: keep this folder off the
# import path. bench/lib is appended (not prepended): a PYTHONPATH naming another Hodei
# checkout (bench/ab.py) must win over the installed one.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.append(os.path.join(HERE, "lib"))

import argparse
import asyncio
import contextlib
import importlib
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from bench_hodei import lib_dir, redis_cpu_s
from bench_procs import (
    Procs,
    clean_env,
    own_cpu_s,
    python_path,
    self_cpu_s,
    supervised,
    tree_cpu_s,
)
from redis.asyncio import Redis

SYSTEMS = ("hodei", "celery", "dramatiq", "rq", "arq", "taskiq")
VARIANTS = ("noop", "spawn")


class Signals:
    """Bytes written on a FIFO by the peers' tasks, one per finished task."""

    def __init__(self, path: str) -> None:
        os.mkfifo(path)
        self.path = path
        self.read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        # Our own writer end: the FIFO never reads as closed between worker processes.
        self.write_fd = os.open(path, os.O_WRONLY)
        self.count = 0
        self.last_at = 0.0
        self.changed = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.read_fd, self._read)

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            got = len(os.read(self.read_fd, 1 << 16))
            if got:
                self.count += got
                self.last_at = time.perf_counter()
                self.changed.set()

    async def wait_for(self, count: int, quiet_s: float) -> bool:
        while self.count < count:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), quiet_s)
            except TimeoutError:
                return False
        return True

    async def settle(self, quiet_s: float) -> None:
        """Until nothing arrives for ``quiet_s``."""
        while True:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), quiet_s)
            except TimeoutError:
                return

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.read_fd)
        os.close(self.read_fd)
        os.close(self.write_fd)


@dataclass
class Sample:
    jobs_per_s: float
    cpu_ms_per_job: dict[str, float]


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=lambda: defaultdict(list))
    failures: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    configs: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)


class PeerRun:
    """One peer's workers for one round, its producer, and its completion signals."""

    def __init__(self, system: str, procs: Procs, redis_url: str, signals: Signals) -> None:
        os.environ["BENCH_REDIS_URL"] = redis_url  # read by the peer module at import
        self.module: Any = importlib.import_module(f"peer_{system}")
        self.system = system
        self.procs = procs
        self.redis_url = redis_url
        self.signals = signals

    async def start(self) -> dict[str, int]:
        env = clean_env(
            BENCH_REDIS_URL=self.redis_url,
            BENCH_FIFO=self.signals.path,
            PYTHONPATH=python_path(lib_dir()),
        )
        argvs = (
            self.module.worker_argv(self.redis_url)
            if self.system == "rq"
            else self.module.worker_argv()
        )
        pids = {}
        for i, argv in enumerate(argvs):
            name = "worker" if len(argvs) == 1 else f"worker{i + 1}"
            pids[name] = self.procs.start(f"{self.system}-{name}", argv, env=env).pid
        self.producer = self.module.Producer(self.redis_url)
        await self._warm_up()
        return pids

    async def _enqueue(self, variant: str, n: int) -> None:
        if asyncio.iscoroutinefunction(self.producer.enqueue):
            await self.producer.enqueue(variant, n)
        else:
            await asyncio.to_thread(self.producer.enqueue, variant, n)

    async def _warm_up(self) -> None:
        # A probe at a time until one finishes (a broker may drop what was sent before its
        # worker created the consumer group), then a batch so every worker process is up.
        deadline = time.monotonic() + 90
        while True:
            base = self.signals.count
            await self._enqueue("noop", 1)
            if await self.signals.wait_for(base + 1, 3.0):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.system}: workers did not start")
        for variant in VARIANTS:
            base = self.signals.count
            await self._enqueue(variant, 100)
            if not await self.signals.wait_for(base + 100, 30.0):
                raise TimeoutError(f"{self.system}: warm-up did not finish")
        await self.signals.settle(0.5)

    async def run(self, variant: str, n: int, quiet_s: float) -> tuple[float, int]:
        base = self.signals.count
        started = time.perf_counter()
        await self._enqueue(variant, n)
        if not await self.signals.wait_for(base + n, quiet_s):
            raise TimeoutError(
                f"{self.system}/{variant}: {self.signals.count - base} of {n} finished, "
                f"then nothing for {quiet_s:g}s"
            )
        return self.signals.last_at - started, 0

    async def close(self) -> None:
        closing = self.producer.close()
        if asyncio.iscoroutine(closing):
            await closing


# Processes whose descendants are counted apart, under this name: Hodei's agent runs the
# functions' processes (sandbox spawner and slots, function processes, lambda instances
# with their runtime client), which the peers' workers have no counterpart of.
CHILDREN_APART = {"agent": "agent_children"}


def cpu_by_process(pids: dict[str, int]) -> dict[str, float]:
    cpu = {}
    for name, pid in pids.items():
        cpu[name] = tree_cpu_s(pid)
        if name in CHILDREN_APART:
            own = own_cpu_s(pid)
            cpu[CHILDREN_APART[name]] = cpu[name] - own
            cpu[name] = own
    return cpu


async def measure(
    run: Any, variant: str, pids: dict[str, int], redis: Redis, jobs: int, quiet_s: float
) -> Sample:
    cpu_before = cpu_by_process(pids)
    producer_before, redis_before = self_cpu_s(), await redis_cpu_s(redis)
    elapsed, refused = await run.run(variant, jobs, quiet_s)
    done = jobs - refused
    cpu = {name: v - cpu_before[name] for name, v in cpu_by_process(pids).items()}
    cpu["producer"] = self_cpu_s() - producer_before
    cpu["redis"] = await redis_cpu_s(redis) - redis_before
    return Sample(done / elapsed, {k: v * 1000 / done for k, v in cpu.items()})


async def one_system(
    system: str, args: argparse.Namespace, db: int, signals: Signals, results: Results
) -> None:
    redis_url = f"redis://{args.redis_host}:{args.redis_port}/{db}"
    redis = Redis.from_url(redis_url)
    await redis.flushdb()
    with supervised(args.log_dir) as procs:
        run: Any = None
        try:
            if system == "hodei":
                from peer_hodei import CONFIG, HodeiPeer

                results.configs[system] = CONFIG
                run = HodeiPeer(procs, redis_url)
            else:
                run = PeerRun(system, procs, redis_url, signals)
                results.configs[system] = run.module.CONFIG
            pids = await run.start()
            for variant in args.variants:
                key = f"{system}.{variant}"
                if system == "hodei" and variant == "noop" and run.noop_unavailable:
                    results.unavailable[key] = run.noop_unavailable
                    continue
                try:
                    sample = await measure(run, variant, pids, redis, args.jobs, args.quiet_s)
                except TimeoutError as exc:
                    results.failures[key].append(str(exc))
                    print(f"# {key}: {exc}", flush=True)
                    continue
                results.samples[key].append(sample)
                print(f"# {key}: {sample.jobs_per_s:.0f} jobs/s", flush=True)
        except (ImportError, TimeoutError, RuntimeError, OSError) as exc:
            results.failures[system].append(f"{type(exc).__name__}: {exc}")
            print(f"# {system}: {type(exc).__name__}: {exc}", flush=True)
        finally:
            if run is not None:
                with contextlib.suppress(Exception):
                    await run.close()
    await redis.flushdb()
    await redis.aclose()


def spread(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}"


def report(args: argparse.Namespace, results: Results, bytes_per_invocation: float | None) -> None:
    for system in args.systems:
        if system in results.configs:
            print(f"# config {system}: {results.configs[system]}")
    medians: dict[str, float] = {}
    for system in args.systems:
        for variant in args.variants:
            key = f"{system}.{variant}"
            samples = results.samples.get(key, [])
            if key in results.unavailable:
                print(f"{key}.jobs_per_s=unavailable  # {results.unavailable[key]}")
                continue
            if not samples:
                if key in results.failures or system in results.failures:
                    why = (results.failures.get(key) or results.failures[system])[-1]
                    print(f"{key}.jobs_per_s=failed  # {why}")
                continue
            rates = [s.jobs_per_s for s in samples]
            medians[key] = statistics.median(rates)
            print(f"{key}.jobs_per_s={medians[key]:.0f}")
            print(f"{key}.jobs_per_s_spread={spread(rates)}")
            names = samples[0].cpu_ms_per_job
            cpu = {
                n: statistics.median(s.cpu_ms_per_job.get(n, 0.0) for s in samples) for n in names
            }
            print(f"{key}.cpu_ms_per_job={sum(cpu.values()):.2f}")
            print(
                f"# {key} cpu ms/job by process: "
                + " ".join(f"{n}={v:.2f}" for n, v in cpu.items())
                + "  (redis: the whole server, shared)"
            )
            if len(samples) < args.rounds:
                print(f"# {key}: only {len(samples)} of {args.rounds} rounds finished")
    for variant in ("spawn", "noop"):
        peers = {
            k: v
            for k, v in medians.items()
            if k.endswith(f".{variant}") and not k.startswith("hodei.")
        }
        hodei = medians.get(f"hodei.{variant}")
        if f"hodei.{variant}" in results.unavailable:
            print(f"hodei_vs_best_peer_{variant}=unavailable")
        elif hodei is None or not peers:
            print(f"hodei_vs_best_peer_{variant}=n/a")
        else:
            best = max(peers, key=lambda k: peers[k])
            print(f"hodei_vs_best_peer_{variant}={hodei / peers[best]:.2f}  # best: {best}")
    if bytes_per_invocation is not None:
        print(f"redis_bytes_per_queued_invocation={bytes_per_invocation:.0f}")


async def main_async(args: argparse.Namespace) -> int:
    import redis as redis_py

    hiredis = "yes" if getattr(redis_py.utils, "HIREDIS_AVAILABLE", False) else "no"
    print(
        f"# peers: {args.jobs} jobs x {args.rounds} rounds, systems {','.join(args.systems)}; "
        f"python {sys.version.split()[0]}, redis-py {redis_py.__version__} (hiredis {hiredis})",
        flush=True,
    )
    results = Results()
    with tempfile.TemporaryDirectory(prefix="hodei-peers-") as folder:
        signals = Signals(os.path.join(folder, "done.fifo"))
        try:
            for round_no in range(args.rounds):
                for i, system in enumerate(args.systems):
                    print(f"# round {round_no + 1}: {system}", flush=True)
                    await one_system(system, args, args.first_db + i, signals, results)
        finally:
            signals.close()
    bytes_per_invocation = None
    if "hodei" in args.systems and args.bytes_k > 0:
        db = args.first_db + args.systems.index("hodei")
        with supervised() as procs:
            from peer_hodei import bytes_per_queued_invocation

            bytes_per_invocation = await bytes_per_queued_invocation(
                procs, f"redis://{args.redis_host}:{args.redis_port}/{db}", args.bytes_k
            )
    report(args, results, bytes_per_invocation)
    return 1 if results.failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per round and variant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--redis-host", default="127.0.0.1")
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument(
        "--first-db", type=int, default=1, help="systems use this database and the next ones"
    )
    parser.add_argument(
        "--quiet-s", type=float, default=60.0, help="give up a run after this long without progress"
    )
    parser.add_argument(
        "--bytes-k", type=int, default=2000, help="invocations queued to weigh one (0 = skip)"
    )
    parser.add_argument("--hodei-job-slots", type=int, default=16, help="the agent's job slots")
    parser.add_argument("--hodei-clients", type=int, default=32, help="concurrent HTTP clients")
    parser.add_argument(
        "--hodei-sandbox", choices=("on", "off"), default="on", help="the process sandbox"
    )
    parser.add_argument("--log-dir", default="", help="keep each process's output here")
    args = parser.parse_args()
    os.environ["BENCH_HODEI_JOB_SLOTS"] = str(args.hodei_job_slots)
    os.environ["BENCH_HODEI_CLIENTS"] = str(args.hodei_clients)
    os.environ["BENCH_HODEI_SANDBOX"] = args.hodei_sandbox
    args.systems = [s for s in args.systems.split(",") if s]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.systems) - set(SYSTEMS) | set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown))}")
    try:
        with supervised():  # SIGTERM -> KeyboardInterrupt, so every `finally` runs
            return asyncio.run(main_async(args))
    except KeyboardInterrupt:
        print("# interrupted: every process started was stopped", flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
