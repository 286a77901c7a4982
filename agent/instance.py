"""One lambda instance: the process or container behind it, its Runtime API endpoint,
its state in the pool, and where its output goes (the logs of the invocation it serves)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Protocol

from hodei.agent.instance_policy import PoolKey, State
from hodei.agent.lambda_api import RuntimeEndpoint
from hodei.agent.runtime import LineSplitter, LogSink
from hodei.proto import hodei_pb2 as pb

log = logging.getLogger(__name__)
Output = Callable[[str, bytes], None]  # (stream, data)
# How a launcher's error starts when the image cannot be had: no retry helps then.
PULL_FAILED = "image_pull_failed"


class Backend(Protocol):
    """The process or container behind an instance."""

    start_error: str  # why its command never ran, once ``wait`` returned

    async def wait(self) -> int:
        """Until it exits; its exit code."""
        ...

    def drain(self) -> None:
        """Hand over, now, the output it has written so far."""
        ...

    async def settle(self) -> None:
        """Wait for output still on its way (relayed output lags behind the answer)."""
        ...

    def kill(self) -> None: ...


class Launcher(Protocol):
    name: str

    @property
    def available(self) -> bool: ...

    async def launch(
        self, job: pb.AssignJobRequest, instance_id: str, output: Output, for_invocation: bool
    ) -> tuple[RuntimeEndpoint, Backend]: ...


_ids = itertools.count(1)


class Instance:
    def __init__(self, job: pb.AssignJobRequest, runtime: str, claimed: bool) -> None:
        self.id = f"{os.getpid():x}-{next(_ids)}"
        self.key = PoolKey(job.function, job.revision)
        self.runtime = runtime
        self.memory_mb = job.resources.memory_mb
        self.state = State.STARTING
        self.claimed = claimed
        self.last_used = time.monotonic()
        self.spawned = time.monotonic()
        self.init_ms = 0
        self.endpoint: RuntimeEndpoint | None = None
        self.backend: Backend | None = None
        self.exit_code: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.up: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sink: LogSink | None = None  # the logs of the invocation it serves
        self.invocation = ""
        self.lines = {s: LineSplitter(s, self._line) for s in ("stdout", "stderr")}

    def output(self, stream: str, data: bytes) -> None:
        self.lines[stream].feed(data)

    def _line(self, stream: str, line: str) -> None:
        # The Lambda runtime clients join a record's lines with "\r", to keep it one
        # CloudWatch event: here each is a line of the logs.
        for part in [p for p in line.split("\r") if p] or [line]:
            if self.sink is not None:
                self.sink(stream, part)
            else:
                log.debug("instance %s (%s) %s: %s", self.id, self.key.function, stream, part)

    async def settle(self) -> None:
        if self.backend is not None:
            await self.backend.settle()

    def take_output(self) -> None:
        """Everything written so far goes to the current invocation's logs."""
        if self.backend is not None:
            self.backend.drain()
        for splitter in self.lines.values():
            splitter.close()

    def kill(self) -> None:
        self.state = State.STOPPING
        if self.backend is not None:
            self.backend.kill()


def exit_text(instance: Instance) -> str:
    code = instance.exit_code.result() if instance.exit_code.done() else None
    if code is None:
        return "still running"
    return f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
