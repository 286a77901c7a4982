"""Fault scenarios against a whole Hodei on loopback: its own redis-server (AOF, appendfsync
always, temp folder, free port), gateway, servers and agents as processes, each scenario in
a fresh world. Bounded in count and time; every process it started is stopped on the way
out (normal end, exception, Ctrl-C, SIGTERM).

Per scenario it prints `acked=` (invocations the gateway answered 200/202), `lost=`
(acked ones not final after the grace period), `recorded_twice=` (invocations with more than
one `finished` event on the event stream), `attempts_backwards=` (an attempt number lower
than one seen before), `recovery_s=` (fault over -> a fresh synchronous invoke succeeds)
and `settle_s=` (stream ended and fault over -> every acked invocation final), plus what
the scenario adds (`violations=`: its own promise broken, e.g. a stale result recorded or
a re-asked key answered with a new invocation). Target: lost=0 and recorded_twice=0
everywhere. `chaos_failed=` lists the scenarios that missed; the exit status is 1 then.

Scenarios: agent-kill (kill -9 an agent x20 under a stream of >= 300 invocations),
leader-kill (kill -9 the leader server, a standby takes over: takeover_s), redis-restart
(kill -9 Redis, restart it on the same AOF folder), agent-freeze (SIGSTOP an agent past
its lease, SIGCONT it: its stale results must be rejected), gateway-kill (kill -9 the
gateway with synchronous calls in flight; the same Idempotency-Key returns the original
invocation), soak (steady rate; RSS of each process and Redis memory at start and end).

The scenarios themselves are in bench/lib/chaos_scenarios.py, the world they run in in
bench/lib/chaos_world.py.

Run: python bench/chaos.py [--scenario NAME]… [--soak-s 300] [--grace-s 60] [--keep-logs]
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
sys.path.append(os.path.join(HERE, "lib"))

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable

import aiohttp
from bench_procs import Procs, supervised
from chaos_scenarios import (
    FUNCTIONS,
    PREFIX,
    World,
    agent_freeze,
    agent_kill,
    gateway_kill,
    leader_kill,
    redis_restart,
    soak,
)
from chaos_world import TIMINGS, RedisServer, new_stack, put_functions

SCENARIOS: dict[
    str, tuple[int, Callable[[World, argparse.Namespace], Awaitable[dict[str, str]]]]
] = {
    # name: (servers, scenario)
    "agent-kill": (1, agent_kill),
    "leader-kill": (2, leader_kill),
    "redis-restart": (2, redis_restart),
    "agent-freeze": (1, agent_freeze),
    "gateway-kill": (1, gateway_kill),
    "soak": (1, soak),
}


async def run_scenario(name: str, args: argparse.Namespace, procs: Procs, folder: str) -> bool:
    servers, scenario = SCENARIOS[name]
    redis = RedisServer(procs, os.path.join(folder, "redis"))
    await redis.start()
    stack = new_stack(procs, redis, PREFIX, os.path.join(folder, "state"))
    for i in range(servers):
        stack.server(f"s{i + 1}")
    stack.gateway()
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=300)) as session:
        try:
            await stack.wait_ready(session)
            await put_functions(stack, session, FUNCTIONS)
            world = World(procs, redis, stack, session, args.grace_s)
            out = await asyncio.wait_for(scenario(world, args), args.scenario_timeout_s)
        except TimeoutError as exc:
            out = {"error": f"timed out: {exc}"}
    # Every process must exit within a few seconds of SIGTERM, whatever it served.
    exits = procs.terminate([p for p in procs.started if not p.name.startswith("redis")])
    out["sigterm_exit_s"] = " ".join(
        f"{n}:{t:.1f}" if t >= 0 else f"{n}:>10(killed)" for n, t in sorted(exits.items())
    )
    print(f"[{name}] ({time.monotonic() - started:.0f}s)")
    for key, value in out.items():
        print(f"{name}.{key}={value}")
    sys.stdout.flush()
    return (
        "error" not in out
        and out.get("lost") == "0"
        and out.get("recorded_twice") == "0"
        and out.get("violations", "0") == "0"
    )


async def main_async(args: argparse.Namespace, procs: Procs, root: str) -> int:
    passed = {}
    for name in args.scenario:
        folder = os.path.join(root, name)
        procs.log_dir = folder
        os.makedirs(folder, exist_ok=True)
        try:
            passed[name] = await run_scenario(name, args, procs, folder)
        finally:
            procs.stop_all()
    print("chaos_passed=" + " ".join(n for n, ok in passed.items() if ok))
    print("chaos_failed=" + " ".join(n for n, ok in passed.items() if not ok))
    return 0 if all(passed.values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario", action="append", choices=list(SCENARIOS), help="repeatable; default all"
    )
    parser.add_argument("--stream", type=int, default=360, help="invocations per stream")
    parser.add_argument("--rate", type=float, default=12.0, help="stream invocations per second")
    parser.add_argument("--kills", type=int, default=20, help="agent-kill: kills")
    parser.add_argument("--outage-s", type=float, default=3.0, help="redis-restart: Redis down")
    parser.add_argument("--sync-calls", type=int, default=16, help="gateway-kill: calls")
    parser.add_argument("--soak-s", type=float, default=300.0)
    parser.add_argument("--soak-rate", type=float, default=10.0)
    parser.add_argument("--grace-s", type=float, default=60.0, help="after the fault, for final")
    parser.add_argument("--scenario-timeout-s", type=float, default=900.0)
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args()
    args.scenario = args.scenario or list(SCENARIOS)
    root = tempfile.mkdtemp(prefix="hodei-chaos-")
    print(f"# chaos: {', '.join(args.scenario)}; timings {TIMINGS}; logs in {root}", flush=True)
    try:
        with supervised() as procs:
            return asyncio.run(main_async(args, procs, root))
    except KeyboardInterrupt:
        print("# interrupted: every process started was stopped", flush=True)
        return 130
    finally:
        if args.keep_logs:
            print(f"# logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
