"""The ``process`` runtime: the function's command as a process started by the agent's
spawner, sandboxed unless the operator chose otherwise (see ``sandbox``)."""

from __future__ import annotations

import asyncio
import os

import psutil

from hodei.agent.identity import ENV_MARK
from hodei.agent.runtime import (
    CappedBuffer,
    LineSplitter,
    LogSink,
    Outcome,
    ended,
    function_env,
    now_ms,
)
from hodei.agent.sandbox import Limits, Sandbox, SpawnRequest, drain, feed
from hodei.errors import SpawnerFailed
from hodei.proto import hodei_pb2 as pb

# Variables a command needs to be found and run; the agent's other variables (tokens,
# addresses) are not the function's business.
PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV")
IO_GRACE_S = 2.0  # after the exit, for the pipes' last bytes


def reap_leftovers(mark: str) -> int:
    """Kill function processes an earlier life of this agent left running (it was killed
    without a chance to stop them) that carry its mark in their environment. The sandbox
    also kills what runs in this mark's cgroups and under this agent's uids when it
    starts, which a function cannot escape by clearing its environment."""
    killed = 0
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid():
                continue
            if proc.environ().get(ENV_MARK) == mark:
                proc.kill()
                killed += 1
        except (psutil.Error, OSError):
            continue
    return killed


class ProcessRuntime:
    name = "process"
    available = True

    def __init__(self, output_cap_bytes: int, mark: str, sandbox: Sandbox) -> None:
        self.output_cap_bytes = output_cap_bytes
        self.mark = mark
        self.sandbox = sandbox
        self.base_env = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}

    async def run(self, job: pb.AssignJobRequest, logs: LogSink, cancel: asyncio.Event) -> Outcome:
        env = dict(self.base_env)
        env.update(function_env(job))
        env[ENV_MARK] = self.mark
        started = now_ms()
        request = SpawnRequest(
            job.command,
            env,
            network=job.network,
            limits=Limits(job.resources.memory_mb, job.resources.cpu_millicores),
        )
        try:
            child = await self.sandbox.spawn(request)
        except SpawnerFailed as exc:
            return _not_started(str(exc), started)
        stdout = CappedBuffer(self.output_cap_bytes)
        stderr = LineSplitter("stderr", logs)
        io = [
            feed(child.stdin, job.payload),
            drain(child.stdout, stdout.write),
            drain(child.stderr, stderr.feed),
        ]
        stopped: list[pb.JobOutcome.ValueType] = []

        def stop(outcome: pb.JobOutcome.ValueType) -> None:
            if not stopped and not child.exited.done():
                stopped.append(outcome)
                child.kill()

        loop = asyncio.get_running_loop()
        timer = (
            loop.call_later(job.timeout_s, stop, pb.JOB_OUTCOME_TIMED_OUT)
            if job.timeout_s > 0
            else None
        )
        cancelled = asyncio.ensure_future(cancel.wait())
        cancelled.add_done_callback(
            lambda f: None if f.cancelled() else stop(pb.JOB_OUTCOME_CANCELLED)
        )
        try:
            result = await child.wait()
        finally:
            if timer is not None:
                timer.cancel()
            cancelled.cancel()
            child.kill()
        # Everything that held the pipes is gone: they end at once, but for what a
        # descendant passed to a process outside the sandbox (unsandboxed only).
        if not all(future.done() for future in io):  # usually all are, by the exit
            _, pending = await asyncio.wait(io, timeout=IO_GRACE_S)
            for future in pending:
                future.cancel()
        stderr.close()
        if result.start_error:
            return _not_started(result.start_error, started)
        code = result.code
        if stopped:
            outcome = stopped[0]
            cancelled_now = outcome == pb.JOB_OUTCOME_CANCELLED
            error = "cancelled" if cancelled_now else f"timed out after {job.timeout_s:g}s"
        else:
            outcome, error = ended(code, result.oom_killed)
        return Outcome(
            outcome,
            exit_code=code if code >= 0 else 128 - code,
            error=error,
            output=stdout.getvalue(),
            truncated=stdout.truncated,
            started_ms=started,
            finished_ms=now_ms(),
        )


def _not_started(reason: str, started: int) -> Outcome:
    return Outcome(
        pb.JOB_OUTCOME_FAILED,
        exit_code=127,
        error=f"cannot start: {reason}",
        started_ms=started,
        finished_ms=now_ms(),
    )
