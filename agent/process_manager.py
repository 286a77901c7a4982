"""The seed's Process Manager: runs assigned jobs concurrently and reports their end.

Each job runs in its own task with the runtime its function asked for. Its stderr lines
are batched into LogEntry messages (by count or after a short delay, whichever first);
its end becomes a JobResult handed to ``on_result``, which the gRPC client buffers
until the server acknowledges it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from hodei import tracing
from hodei.agent import metrics
from hodei.agent.runtime import LogSink, Outcome, Runtime
from hodei.domain import OUTCOMES, function_label, now_ms
from hodei.logs import inv
from hodei.proto import hodei_pb2 as pb

log = logging.getLogger(__name__)
Runner = Callable[[LogSink, asyncio.Event], Awaitable[Outcome]]
# A log batch is sent once it holds this many bytes (or batch_lines lines, or flush_s).
BATCH_BYTES = 256 * 1024
# A job's JobAccepted waits this long, or for its first log batch or its end, so that a job
# that ends at once costs the server one round trip for both (the record says `running`
# from the assignment on; this only announces the start, with the time it happened).
ACCEPT_DELAY_S = 0.05


@dataclass(eq=False)
class RunningJob:
    request: pb.AssignJobRequest
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    hand_back: bool = False
    lines: list[pb.LogLine] = field(default_factory=list)
    line_bytes: int = 0
    flush_handle: asyncio.TimerHandle | None = None
    accepted: pb.AgentMessage | None = None  # not sent yet
    accept_handle: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None


class ProcessManager:
    def __init__(
        self,
        runtimes: dict[str, Runtime],
        send: Callable[[pb.AgentMessage], None],
        on_result: Callable[[pb.JobResult], None],
        worker_id: str,
        batch_lines: int = 200,
        flush_s: float = 0.05,
        lambda_runtimes: dict[str, Runtime] | None = None,
    ) -> None:
        self.runtimes = runtimes
        self.lambda_runtimes = lambda_runtimes or {}
        self.send = send
        self.on_result = on_result
        self.worker_id = worker_id
        self.batch_lines = batch_lines
        self.flush_s = flush_s
        self.jobs: dict[str, RunningJob] = {}
        self.idle = asyncio.Event()
        self.idle.set()

    def running(self) -> list[pb.RunningJob]:
        return [
            pb.RunningJob(invocation_id=i, attempt=j.request.attempt) for i, j in self.jobs.items()
        ]

    def start(self, request: pb.AssignJobRequest) -> None:
        key = request.invocation_id
        current = self.jobs.get(key)
        if current is not None:
            if current.request.attempt >= request.attempt:
                log.warning(
                    "invocation %s attempt %d is already running here",
                    key,
                    request.attempt,
                    extra=inv(key, request.attempt),
                )
                return
            # A newer attempt of a job we still run: the old one is stale, stop it.
            current.cancel.set()
        lambda_ = request.interface == "lambda"
        runtime = (self.lambda_runtimes if lambda_ else self.runtimes).get(request.runtime)
        job = RunningJob(request)
        self.jobs[key] = job
        self.idle.clear()
        metrics.RUNNING_JOBS.set(len(self.jobs))
        if runtime is None:
            job.task = asyncio.create_task(
                self._refuse(job, f"runtime {request.runtime!r} is not available on this worker")
            )
            return
        job.accepted = pb.AgentMessage(
            accepted=pb.JobAccepted(
                invocation_id=key,
                attempt=request.attempt,
                worker_id=self.worker_id,
                started_at_ms=now_ms(),
            )
        )
        job.accept_handle = asyncio.get_running_loop().call_later(ACCEPT_DELAY_S, self._accept, job)
        log.info(
            "invocation %s attempt %d started (%s)",
            key,
            request.attempt,
            request.function,
            extra=inv(key, request.attempt, function=request.function),
        )
        job.task = asyncio.create_task(
            self._run(job, lambda logs, cancel: runtime.run(request, logs, cancel))
        )

    def adopt(self, request: pb.AssignJobRequest, runner: Runner) -> None:
        """Take back a job an earlier life of this agent started (its container outlived
        the agent): it is reported as running and its end as usual."""
        job = RunningJob(request)
        self.jobs[request.invocation_id] = job
        self.idle.clear()
        metrics.RUNNING_JOBS.set(len(self.jobs))
        job.task = asyncio.create_task(self._run(job, runner))

    def cancel(self, invocation_id: str, attempt: int, *, hand_back: bool = False) -> bool:
        job = self.jobs.get(invocation_id)
        if job is None or (attempt and job.request.attempt != attempt):
            return False
        job.hand_back = hand_back
        job.cancel.set()
        return True

    def hand_back_all(self) -> None:
        for invocation_id, job in list(self.jobs.items()):
            self.cancel(invocation_id, job.request.attempt, hand_back=True)

    async def _refuse(self, job: RunningJob, error: str) -> None:
        started = now_ms()
        self._finish(
            job,
            Outcome(
                pb.JOB_OUTCOME_FAILED,
                exit_code=-1,
                error=error,
                started_ms=started,
                finished_ms=started,
            ),
        )

    async def _run(self, job: RunningJob, runner: Runner) -> None:
        request = job.request
        started = time.perf_counter()
        started_ns = time.time_ns()

        def logs(stream: str, line: str) -> None:
            job.lines.append(pb.LogLine(ts_ms=now_ms(), stream=stream, line=line))
            job.line_bytes += len(line) + 16
            if len(job.lines) >= self.batch_lines or job.line_bytes >= BATCH_BYTES:
                self._flush(job)
            elif job.flush_handle is None:
                job.flush_handle = asyncio.get_running_loop().call_later(
                    self.flush_s, self._flush, job
                )

        try:
            outcome = await runner(logs, job.cancel)
        except Exception as exc:
            log.exception(
                "invocation %s attempt %d: runtime error",
                request.invocation_id,
                request.attempt,
                extra=inv(request.invocation_id, request.attempt),
            )
            outcome = Outcome(
                pb.JOB_OUTCOME_FAILED,
                exit_code=-1,
                error=f"runtime error: {exc}",
                started_ms=now_ms(),
                finished_ms=now_ms(),
            )
        if job.hand_back and outcome.outcome != pb.JOB_OUTCOME_SUCCEEDED:
            outcome.outcome = pb.JOB_OUTCOME_HANDED_BACK
            outcome.error = "handed back: the worker is shutting down"
        status = OUTCOMES[outcome.outcome]
        label = function_label(request.function, request.revision)
        metrics.JOB_DURATION.labels(label, status).observe(time.perf_counter() - started)
        if tracing.active():
            self._trace(request, outcome, status, started_ns)
        self._finish(job, outcome)

    def _trace(
        self, request: pb.AssignJobRequest, outcome: Outcome, status: str, started_ns: int
    ) -> None:
        tracing.span(
            "execute",
            request.traceparent,
            started_ns,
            time.time_ns(),
            {
                "hodei.invocation_id": request.invocation_id,
                "hodei.function": request.function,
                "hodei.attempt": request.attempt,
                "hodei.worker_id": self.worker_id,
                "hodei.runtime": request.runtime,
                "hodei.status": status,
                "hodei.exit_code": outcome.exit_code,
            },
            error="" if outcome.outcome == pb.JOB_OUTCOME_SUCCEEDED else outcome.error or status,
        )

    def _accept(self, job: RunningJob) -> None:
        if job.accept_handle is not None:
            job.accept_handle.cancel()
            job.accept_handle = None
        if job.accepted is not None:
            accepted, job.accepted = job.accepted, None
            self.send(accepted)

    def _flush(self, job: RunningJob) -> None:
        self._accept(job)  # the server hears of the start before any log line
        if job.flush_handle is not None:
            job.flush_handle.cancel()
            job.flush_handle = None
        if job.lines:
            lines, job.lines = job.lines, []
            job.line_bytes = 0
            self.send(
                pb.AgentMessage(
                    log=pb.LogEntry(
                        invocation_id=job.request.invocation_id,
                        attempt=job.request.attempt,
                        lines=lines,
                    )
                )
            )

    def _finish(self, job: RunningJob, outcome: Outcome) -> None:
        self._flush(job)
        request = job.request
        if self.jobs.get(request.invocation_id) is job:
            del self.jobs[request.invocation_id]
        if not self.jobs:
            self.idle.set()
        metrics.RUNNING_JOBS.set(len(self.jobs))
        log.info(
            "invocation %s attempt %d ended %s (exit %d)",
            request.invocation_id,
            request.attempt,
            OUTCOMES[outcome.outcome],
            outcome.exit_code,
            extra=inv(request.invocation_id, request.attempt),
        )
        self.on_result(
            pb.JobResult(
                invocation_id=request.invocation_id,
                attempt=request.attempt,
                outcome=outcome.outcome,
                exit_code=outcome.exit_code,
                error=outcome.error,
                output=outcome.output,
                output_truncated=outcome.truncated,
                started_at_ms=outcome.started_ms,
                finished_at_ms=outcome.finished_ms,
                final=outcome.final,
                cold_start=outcome.cold_start,
                init_ms=outcome.init_ms,
            )
        )

    async def hand_back(self, request: pb.AssignJobRequest) -> None:
        """Refuse an assignment without running it (the worker is draining)."""
        self.on_result(
            pb.JobResult(
                invocation_id=request.invocation_id,
                attempt=request.attempt,
                outcome=pb.JOB_OUTCOME_HANDED_BACK,
                error="handed back: the worker is draining",
                started_at_ms=now_ms(),
                finished_at_ms=now_ms(),
            )
        )
