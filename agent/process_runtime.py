"""The ``process`` runtime: the function's command as a child process group of the agent."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
from collections.abc import Callable

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
from hodei.proto import hodei_pb2 as pb

CHUNK = 64 * 1024
# Variables a command needs to be found and run; the agent's other variables (tokens,
# addresses) are not the function's business.
PASSED_THROUGH = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV")


def _limit_memory(pid: int, memory_mb: int) -> None:
    """Cap the child's data segment (heap and private writable mappings, close to what a
    process really uses; RLIMIT_AS would also count reserved address space).

    Set from outside right after the spawn rather than in a preexec hook: a hook forces a
    full fork() of the agent and divides the spawn rate by three. The child has run for
    microseconds by then, long before any allocation worth limiting.
    """
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        with contextlib.suppress(ProcessLookupError, PermissionError):
            resource.prlimit(pid, resource.RLIMIT_DATA, (limit, limit))


def reap_leftovers(mark: str) -> int:
    """Kill function processes an earlier life of this agent left running (it was killed
    without a chance to stop them); they carry its mark in their environment."""
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

    def __init__(self, output_cap_bytes: int, mark: str, workdir: str = "/tmp") -> None:
        self.output_cap_bytes = output_cap_bytes
        self.mark = mark
        self.workdir = workdir

    async def run(self, job: pb.AssignJobRequest, logs: LogSink, cancel: asyncio.Event) -> Outcome:
        env = {k: os.environ[k] for k in PASSED_THROUGH if k in os.environ}
        env.update(function_env(job))
        env[ENV_MARK] = self.mark
        started = now_ms()
        try:
            proc = await asyncio.create_subprocess_exec(
                *job.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        except OSError as exc:
            return Outcome(
                pb.JOB_OUTCOME_FAILED,
                exit_code=127,
                error=f"cannot start: {exc}",
                started_ms=started,
                finished_ms=now_ms(),
            )
        _limit_memory(proc.pid, job.resources.memory_mb)
        stdout = CappedBuffer(self.output_cap_bytes)
        stderr = LineSplitter("stderr", logs)
        assert proc.stdin and proc.stdout and proc.stderr
        io = asyncio.gather(
            _feed(proc.stdin, job.payload),
            _drain(proc.stdout, stdout.write),
            _drain(proc.stderr, stderr.feed),
        )
        waiter = asyncio.ensure_future(proc.wait())
        cancelled = asyncio.ensure_future(cancel.wait())
        timeout = job.timeout_s if job.timeout_s > 0 else None
        done, _ = await asyncio.wait(
            {waiter, cancelled}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        cancelled.cancel()
        outcome: pb.JobOutcome.ValueType | None = None
        error = ""
        if waiter not in done:
            outcome = pb.JOB_OUTCOME_CANCELLED if cancel.is_set() else pb.JOB_OUTCOME_TIMED_OUT
            error = "cancelled" if cancel.is_set() else f"timed out after {job.timeout_s:g}s"
        # Whatever the function left behind in its process group goes with it.
        _kill_group(proc.pid)
        code = await waiter
        with contextlib.suppress(Exception):
            await asyncio.wait_for(io, timeout=2.0)
        stderr.close()
        exit_code = code if code >= 0 else 128 - code
        if outcome is None:
            outcome, error = ended(code)
        return Outcome(
            outcome,
            exit_code=exit_code,
            error=error,
            output=stdout.getvalue(),
            truncated=stdout.truncated,
            started_ms=started,
            finished_ms=now_ms(),
        )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _feed(stdin: asyncio.StreamWriter, payload: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        if payload:
            stdin.write(payload)
            await stdin.drain()
        stdin.close()
        await stdin.wait_closed()


async def _drain(stream: asyncio.StreamReader, sink: Callable[[bytes], None]) -> None:
    while chunk := await stream.read(CHUNK):
        sink(chunk)
