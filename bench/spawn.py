"""Spawn benchmark: what starting a function process costs the agent, on the process
runtime's previous path (asyncio's subprocess machinery in the agent) and on the spawner
(agent/sandbox*.py), unsandboxed and sandboxed, in alternated rounds of one run.

Each spawn is a whole stdio invocation of ``/bin/true`` as the runtime does it (empty payload
on stdin, stdout and stderr drained, exit collected, leftovers killed). Per variant:
``agent_cpu_us`` is this process's CPU per spawn (it plays the agent), ``spawner_cpu_us`` the
spawner's and its slot processes' own CPU (forks, messages), ``total_cpu_us`` both plus the
children's (set-up and the command), ``spawns_per_s`` the rate with ``--concurrency`` spawns
in flight.

This process plays the agent: it loads the agent's modules and serves gRPC (threads, fds,
a bigger heap), which is what the previous path's cost grows with (``--bare`` skips that).

Run: python bench/spawn.py [--rounds 5] [--spawns 500] [--concurrency 4] [--bare]
(sandboxed needs root; ends with key=value lines: median and min..max over rounds)
"""

from __future__ import annotations

import os
import sys

# bench/http.py is named like the standard library's http package: keep this folder off the
# import path so that `import http` (aiohttp, prometheus_client) finds the real one.
sys.path[:] = [
    p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))
]

import argparse
import asyncio
import contextlib
import resource
import secrets
import signal
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hodei.agent.runtime import CappedBuffer, LineSplitter
from hodei.agent.sandbox import Sandbox, SandboxConfig, SpawnRequest, drain, feed

TICKS = os.sysconf("SC_CLK_TCK")
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
COMMAND = ["/bin/true"]


async def previous_path() -> None:
    """The process runtime before the spawner: asyncio's subprocess machinery in the agent."""
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
        cwd="/tmp",
        start_new_session=True,
    )
    stdout = CappedBuffer(1 << 20)
    stderr = LineSplitter("stderr", lambda stream, line: None)
    assert proc.stdin and proc.stdout and proc.stderr

    async def feed_stdin() -> None:
        assert proc.stdin
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.close()
            await proc.stdin.wait_closed()

    async def drain_stream(stream: asyncio.StreamReader, sink: Callable[[bytes], None]) -> None:
        while chunk := await stream.read(65536):
            sink(chunk)

    io = asyncio.gather(
        feed_stdin(),
        drain_stream(proc.stdout, stdout.write),
        drain_stream(proc.stderr, stderr.feed),
    )
    await proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    await asyncio.wait_for(io, 2.0)


def spawner_path(sandbox: Sandbox) -> Callable[[], Awaitable[None]]:
    async def spawn() -> None:
        child = await sandbox.spawn(SpawnRequest(COMMAND, ENV))
        stdout = CappedBuffer(1 << 20)
        stderr = LineSplitter("stderr", lambda stream, line: None)
        io = [
            feed(child.stdin, b""),
            drain(child.stdout, stdout.write),
            drain(child.stderr, stderr.feed),
        ]
        result = await child.wait()
        await asyncio.wait(io, timeout=2.0)
        if result.code != 0:
            raise RuntimeError(f"/bin/true ended with {result}")

    return spawn


def cpu_of(pid: int) -> tuple[float, float]:
    """(own CPU s, reaped children's CPU s) of process ``pid``: its own from schedstat
    (nanoseconds), its children's from stat (clock ticks: ~20 us per spawn at 500 spawns)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            own = int(f.read().split()[0]) / 1e9
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return own, (int(fields[13]) + int(fields[14])) / TICKS


def spawner_cpu(spawner_pid: int) -> dict[int, tuple[float, float]]:
    """``cpu_of`` the spawner and of its slot processes (its children)."""
    pids = [spawner_pid]
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == spawner_pid:
                        pids.append(int(name))
            except OSError:
                continue
    return {pid: cpu_of(pid) for pid in pids}


def rusage_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def batch(
    spawn: Callable[[], Awaitable[None]], count: int, concurrency: int, spawner_pid: int
) -> dict[str, float]:
    left = count

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await spawn()

    spawner_before = spawner_cpu(spawner_pid) if spawner_pid else {}
    agent_before = rusage_s(resource.RUSAGE_SELF)
    children_before = rusage_s(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    spawner = 0.0
    agent = rusage_s(resource.RUSAGE_SELF) - agent_before
    commands = rusage_s(resource.RUSAGE_CHILDREN) - children_before
    spawner_after = spawner_cpu(spawner_pid) if spawner_pid else {}
    for pid, (own, children) in spawner_after.items():
        own_before, children_before = spawner_before.get(pid, (0.0, 0.0))
        spawner += own - own_before
        commands += children - children_before
    return {
        "agent_cpu_us": agent / count * 1e6,
        "spawner_cpu_us": spawner / count * 1e6,
        "total_cpu_us": (agent + spawner + commands) / count * 1e6,
        "spawns_per_s": count / elapsed,
    }


async def agent_like() -> Any:
    """Load what the agent loads and serve gRPC, as the agent does while it runs jobs."""
    import grpc
    from grpc_health.v1 import health, health_pb2_grpc

    import hodei.agent.agent  # noqa: F401  (the agent's modules: gRPC, Docker, metrics...)

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)  # type: ignore[attr-defined]
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--spawns", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--bare", action="store_true", help="do not play the agent")
    args = parser.parse_args()
    grpc_server = None if args.bare else await agent_like()
    if sys.version_info < (3, 12) and hasattr(asyncio, "PidfdChildWatcher"):
        # As the agent does (agent.py): one pidfd per child, not a thread each.
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)
    mark = secrets.token_hex(16)
    sandboxes = {"spawner_off": Sandbox.start(SandboxConfig(sandboxed=False, mark=mark))}
    if os.geteuid() == 0:
        config = SandboxConfig(sandboxed=True, mark=mark, uid_count=max(8, args.concurrency))
        sandboxes["spawner_on"] = Sandbox.start(config)
    else:
        print("# not root: the sandboxed variant is skipped", file=sys.stderr)
    variants: dict[str, tuple[Callable[[], Awaitable[None]], int]] = {
        "previous": (previous_path, 0)
    }
    for name, sandbox in sandboxes.items():
        variants[name] = (spawner_path(sandbox), sandbox.process.pid)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    names = list(variants)
    for spawn, pid in variants.values():  # warm-up: imports, page cache, first forks
        await batch(spawn, 20, args.concurrency, pid)
    for round_number in range(args.rounds):
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for name in order:
            spawn, pid = variants[name]
            results[name].append(await batch(spawn, args.spawns, args.concurrency, pid))
        print(f"# round {round_number + 1}/{args.rounds} done", file=sys.stderr)
    for sandbox in sandboxes.values():
        await sandbox.close()
    if grpc_server is not None:
        await grpc_server.stop(0)
    print(
        f"rounds={args.rounds} spawns_per_round={args.spawns} concurrency={args.concurrency} "
        f"agent_like={not args.bare}"
    )
    medians: dict[str, dict[str, float]] = {}
    for name, rounds in results.items():
        medians[name] = {}
        for key in rounds[0]:
            values = [r[key] for r in rounds]
            medians[name][key] = statistics.median(values)
            print(
                f"{name}_{key}={medians[name][key]:.1f} spread={min(values):.1f}..{max(values):.1f}"
            )
    for name in sandboxes:
        ratio = medians["previous"]["agent_cpu_us"] / medians[name]["agent_cpu_us"]
        print(f"agent_cpu_previous_over_{name}={ratio:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
