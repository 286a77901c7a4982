"""Runtimes run one job attempt; this module holds their shared types and helpers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from hodei.domain import now_ms
from hodei.proto import hodei_pb2 as pb

LogSink = Callable[[str, str], None]  # (stream, line)
__all__ = ["now_ms"]


@dataclass(slots=True)
class Outcome:
    outcome: pb.JobOutcome.ValueType
    exit_code: int = 0
    error: str = ""
    output: bytes = b""
    truncated: bool = False
    started_ms: int = 0
    finished_ms: int = 0
    final: bool = False  # retrying cannot help
    cold_start: bool | None = None  # lambda: this invocation started its instance
    init_ms: int = 0  # lambda: how long that instance took to be ready


def ended(code: int, oom_killed: bool = False) -> tuple[pb.JobOutcome.ValueType, str]:
    """The outcome and error of a function that exited with ``code`` (negative: signal)."""
    if oom_killed:
        return pb.JOB_OUTCOME_FAILED, "oom_killed"
    if code == 0:
        return pb.JOB_OUTCOME_SUCCEEDED, ""
    if code > 0:
        return pb.JOB_OUTCOME_FAILED, f"exit code {code}"
    return pb.JOB_OUTCOME_FAILED, f"killed by signal {-code}"


class Runtime(Protocol):
    name: str

    @property
    def available(self) -> bool:
        """Whether it can run a job now; only available runtimes are advertised."""
        ...

    async def run(self, job: pb.AssignJobRequest, logs: LogSink, cancel: asyncio.Event) -> Outcome:
        """Run the job to its end; ``cancel`` set means kill it now."""
        ...


def function_env(job: pb.AssignJobRequest) -> dict[str, str]:
    """What the contract promises a function in its environment."""
    env = dict(job.env)
    env["HODEI_INVOCATION_ID"] = job.invocation_id
    env["HODEI_FUNCTION"] = job.function
    env["HODEI_ATTEMPT"] = str(job.attempt)
    if job.traceparent:
        env["TRACEPARENT"] = job.traceparent
    return env


class CappedBuffer:
    """Keeps the first ``cap`` bytes written to it and notes whether more came."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[bytes] = []
        self.size = 0
        self.truncated = False

    def write(self, data: bytes) -> None:
        room = self.cap - self.size
        if len(data) > room:
            self.truncated = True
            data = data[: max(0, room)]
        if data:
            self.parts.append(data)
            self.size += len(data)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class LineSplitter:
    """Turns a byte stream into lines for the log sink, bounding a line's length in bytes
    as it is sent (invalid UTF-8 becomes U+FFFD, three bytes for one: it is cut again
    after decoding)."""

    MAX_LINE = 16 * 1024

    def __init__(self, stream: str, sink: LogSink) -> None:
        self.stream = stream
        self.sink = sink
        self.pending = b""

    def feed(self, data: bytes) -> None:
        self.pending += data
        while True:
            cut = self.pending.find(b"\n")
            if cut < 0:
                if len(self.pending) > self.MAX_LINE:
                    self._emit(self.pending[: self.MAX_LINE])
                    self.pending = self.pending[self.MAX_LINE :]
                    continue
                return
            self._emit(self.pending[:cut])
            self.pending = self.pending[cut + 1 :]

    def close(self) -> None:
        if self.pending:
            self._emit(self.pending)
            self.pending = b""

    def _emit(self, raw: bytes) -> None:
        line = raw.decode("utf-8", errors="replace").rstrip("\r")
        encoded = line.encode()
        if len(encoded) > self.MAX_LINE:
            line = encoded[: self.MAX_LINE].decode("utf-8", errors="ignore")
        self.sink(self.stream, line)
